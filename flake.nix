{
  description = "tailnetd: a GitOps-driven, self-hosted Tailscale control server";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    flake-utils.url = "github:numtide/flake-utils";
  };

  outputs = { self, nixpkgs, flake-utils }:
    flake-utils.lib.eachDefaultSystem (system:
      let
        pkgs = nixpkgs.legacyPackages.${system};
        python = pkgs.python311;
        tailnetd = python.pkgs.buildPythonApplication {
          pname = "tailnetd";
          version = "0.1.0";
          pyproject = true;
          src = ./.;
          build-system = [ python.pkgs.setuptools ];
          dependencies = with python.pkgs; [
            starlette
            uvicorn
            hypercorn
            h2
            pynacl
            cryptography
            ruamel-yaml
            gitpython
            watchfiles
            zstandard
            jsonschema
            acme
          ];
          # The end-to-end tests need the real tailscale client and network
          # namespaces; run them with `make test` outside the sandbox.
          doCheck = false;
          meta = {
            description = "GitOps-driven Tailscale control server";
            mainProgram = "tailnetd";
          };
        };
      in
      {
        packages.default = tailnetd;
        packages.tailnetd = tailnetd;

        apps.default = {
          type = "app";
          program = "${tailnetd}/bin/tailnetd";
        };
        apps.gitctl = {
          type = "app";
          program = "${tailnetd}/bin/gitctl";
        };

        devShells.default = pkgs.mkShell {
          packages = [
            (python.withPackages (ps: tailnetd.dependencies ++ (with ps; [ pytest hypothesis mypy ])))
            pkgs.ruff
            pkgs.tailscale
            pkgs.git
            pkgs.gnumake
          ];
        };
      });
}
