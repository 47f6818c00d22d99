"""The operator page's HTML: Jinja2 templates with autoescaping on, so every
value from a node, a commit or a question is escaped. No script, no external
asset: the one stylesheet is served by the same process (`STYLE`)."""

from __future__ import annotations

from typing import Any

import jinja2

__all__ = ["STYLE", "render"]

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 2rem 2rem; color: #1b1b1b; }
header { display: flex; gap: 1.5rem; align-items: center; border-bottom: 1px solid #ccc; }
header h1 { font-size: 1.2rem; margin: .8rem 0; } header form { margin-left: auto; }
nav a { margin-right: 1rem; } h2 { font-size: 1.1rem; margin-top: 1.8rem; }
table { border-collapse: collapse; width: 100%; } caption { text-align: left; color: #555; }
th, td { border: 1px solid #ccc; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } code { font-size: .9em; }
.yes { color: #0a6b2b; font-weight: 600; } .no { color: #a11; font-weight: 600; }
.errors li { font-family: monospace; white-space: pre-wrap; color: #a11; }
label { display: inline-block; margin: .3rem 1rem .3rem 0; } input, select { font: inherit; }
.muted { color: #666; }
"""

_BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}{% endblock %} · tailnetd</title>
<link rel="stylesheet" href="/ui/style.css"></head>
<body><header><h1>tailnetd</h1>
{% if session %}<nav aria-label="Sections"><a href="/ui/">Overview</a>
<a href="/ui/access">Access explorer</a></nav>
<form method="post" action="/ui/logout"><input type="hidden" name="csrf" value="{{ session.csrf }}">
<span class="muted">{{ session.who }} ({{ session.scope }})</span>
<button type="submit">Log out</button></form>{% endif %}
</header><main>{% block main %}{% endblock %}</main></body></html>
"""

_LOGIN = """{% extends "base" %}{% block title %}Log in{% endblock %}{% block main %}
<h2>Log in</h2>
<p>The operator page wants an API key with the <code>read</code> or <code>admin</code> scope.
Create one on the server with <code>tailnetd apikeys create --scope read</code>.</p>
{% if error %}<p class="no" role="alert">{{ error }}</p>{% endif %}
<form method="post" action="/ui/login">
<label for="key">API key</label>
<input id="key" name="key" type="password" autocomplete="off" required size="60">
<button type="submit">Log in</button></form>
<p class="muted">Clients join with
<code>tailscale up --login-server=&lt;this URL&gt; --auth-key=&lt;key&gt;</code>;
the admin API is described at <a href="/api/v1/openapi.json">/api/v1/openapi.json</a>.</p>
{% endblock %}
"""

_OVERVIEW = """{% extends "base" %}{% block title %}Overview{% endblock %}{% block main %}
<h2 id="commit">Serving commit</h2>
{% if commit.serving %}<p>Serving <code>{{ commit.serving }}</code>
since {{ commit.serving_since }}{% if commit.signer %}, signed by {{ commit.signer }}
{%- endif %}.</p>
{% else %}<p class="no">No commit is being served yet.</p>{% endif %}
{% if commit.rejected %}<h2 id="rejected">Rejected commit</h2>
<p>Commit <code>{{ commit.rejected }}</code> was refused at {{ commit.rejected_at }};
the commit above keeps serving.</p>
<ul class="errors">{% for e in commit.errors %}<li>{{ e }}</li>{% endfor %}</ul>{% endif %}

<h2 id="nodes">Nodes</h2>
<table><caption>{{ nodes|length }} nodes,
{{ nodes|selectattr("online")|list|length }} online</caption>
<thead><tr><th scope="col">Name</th><th scope="col">User or tags</th><th scope="col">Online</th>
<th scope="col">Addresses</th><th scope="col">Routes advertised</th><th scope="col">Approved</th>
<th scope="col">Primary</th><th scope="col">Last seen</th><th scope="col">Client version</th>
<th scope="col">Key expiry</th></tr></thead><tbody>
{% for n in nodes %}<tr><th scope="row">{{ n.name }}</th><td>{{ n.owner }}</td>
<td class="{{ 'yes' if n.online else 'no' }}">{{ "online" if n.online else "offline" }}</td>
<td>{{ n.addresses|join(", ") }}</td><td>{{ n.advertised|join(", ") or "-" }}</td>
<td>{{ n.approved|join(", ") or "-" }}</td><td>{{ n.primary|join(", ") or "-" }}</td>
<td>{{ n.last_seen }}</td><td>{{ n.version }}</td><td>{{ n.key_expiry }}</td></tr>
{% else %}<tr><td colspan="10">No node has joined yet.</td></tr>{% endfor %}
</tbody></table>

<h2 id="users">Users</h2>
<table><thead><tr><th scope="col">Name</th><th scope="col">Email</th>
<th scope="col">Display name</th><th scope="col">Nodes</th>
<th scope="col">Source</th></tr></thead><tbody>
{% for u in users %}<tr><th scope="row">{{ u.name }}</th><td>{{ u.email }}</td>
<td>{{ u.display_name }}</td><td>{{ u.nodes }}</td><td>{{ u.source }}</td></tr>
{% else %}<tr><td colspan="5">No users are declared in tailnet.d.</td></tr>{% endfor %}
</tbody></table>

<h2 id="history">History</h2>
<table><thead><tr><th scope="col">When</th><th scope="col">Commit</th>
<th scope="col">Outcome</th><th scope="col">Why</th></tr></thead><tbody>
{% for h in commit.history %}<tr><td>{{ h.at }}</td><td><code>{{ h.revision }}</code></td>
<td class="{{ 'yes' if h.outcome == 'served' else 'no' }}">{{ h.outcome }}</td>
<td><ul class="errors">{% for r in h.reasons %}<li>{{ r }}</li>{% endfor %}</ul></td></tr>
{% else %}<tr><td colspan="4">No commit has been recorded yet.</td></tr>{% endfor %}
</tbody></table>
{% endblock %}
"""

_ACCESS = """{% extends "base" %}{% block title %}Access explorer{% endblock %}{% block main %}
<h2>Access explorer</h2>
<p>May a source reach a destination? Answered from the serving commit
(<code>{{ serving or "none" }}</code>) over the nodes registered now. A source or destination
is a device, a user (name or email), a group, a tag, a host or an address.</p>
<form method="get" action="/ui/access">
<label for="src">Source</label>
<input id="src" name="src" list="names" value="{{ form.src }}" required>
<label for="dst">Destination</label>
<input id="dst" name="dst" list="names" value="{{ form.dst }}" required>
<label for="port">Port (empty: any)</label>
<input id="port" name="port" inputmode="numeric" size="6" value="{{ form.port }}">
<label for="proto">Protocol</label>
<select id="proto" name="proto">{% for p in protocols %}
<option{% if p == form.proto %} selected{% endif %}>{{ p }}</option>{% endfor %}</select>
<button type="submit">Explain</button>
<datalist id="names">{% for name in names %}<option value="{{ name }}">{% endfor %}</datalist>
</form>
{% if error %}<p class="no" role="alert">{{ error }}</p>{% endif %}
{% if answer %}<h2 id="answer">{{ answer.question }}:
<span class="{{ 'no' if answer.verdict == 'denied' else 'yes' }}">{{ answer.verdict }}</span></h2>
<table><thead><tr><th scope="col">Source</th><th scope="col">Destination</th>
<th scope="col">Allowed</th><th scope="col">Rule</th><th scope="col">File and line</th>
<th scope="col">Ports</th></tr></thead><tbody>
{% for r in answer.rows %}<tr><td>{{ r.src }}</td><td>{{ r.dst }}</td>
<td class="{{ 'yes' if r.allowed else 'no' }}">{{ "allowed" if r.allowed else "denied" }}</td>
<td>{{ r.rule or "-" }}</td><td><code>{{ r.where or "-" }}</code></td><td>{{ r.ports }}</td></tr>
{% else %}<tr><td colspan="6">No pair of distinct devices to answer for.</td></tr>{% endfor %}
</tbody></table>{% endif %}
{% endblock %}
"""

_ENV = jinja2.Environment(
    loader=jinja2.DictLoader(
        {"base": _BASE, "login": _LOGIN, "overview": _OVERVIEW, "access": _ACCESS}
    ),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def render(name: str, **values: Any) -> str:
    """The page `name` ("login", "overview", "access") filled with `values`."""
    values.setdefault("session", None)
    return _ENV.get_template(name).render(**values)
