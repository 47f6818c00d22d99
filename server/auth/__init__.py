"""How nodes and people prove who they are: pending interactive logins
(`pending`), and the pages a login URL shows (`pages`)."""
