"""The tailnet.d model: drop-in files, their sections, schemas and typed values."""

from gitctl.tailnet.files import (
    EXTENSIONS,
    Merged,
    Provenance,
    Section,
    SourceFile,
    merge_files,
    parse_file,
    split_sections,
)
from gitctl.tailnet.kinds import POLICY_KEYS, TOP_LEVEL_KEYS
from gitctl.tailnet.model import (
    DerpNodeSpec,
    DerpRegionSpec,
    DnsSpec,
    EmbeddedDerp,
    ExtraRecord,
    IPNetwork,
    Model,
    RouteApproval,
    TailnetSettings,
    UserSpec,
    build_model,
    parse_duration,
)
from gitctl.tailnet.schema import SCHEMA_KINDS, load_schema, validate_file

__all__ = [
    "EXTENSIONS",
    "POLICY_KEYS",
    "SCHEMA_KINDS",
    "TOP_LEVEL_KEYS",
    "DerpNodeSpec",
    "DerpRegionSpec",
    "DnsSpec",
    "EmbeddedDerp",
    "ExtraRecord",
    "IPNetwork",
    "Merged",
    "Model",
    "Provenance",
    "RouteApproval",
    "Section",
    "SourceFile",
    "TailnetSettings",
    "UserSpec",
    "build_model",
    "load_schema",
    "merge_files",
    "parse_duration",
    "parse_file",
    "split_sections",
    "validate_file",
]
