"""Where commits come from and what becomes of them: a watched work tree or a
remote repository, signature authority, the commit lifecycle (take, refuse,
last good, status) and its history."""
