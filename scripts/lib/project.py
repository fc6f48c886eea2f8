"""What the Python checks read from the project, parsed in one place:
services/registry.txt, and the variables docs/configuration.md documents
(which tests/e2e/tests/fast/docs.rs checks, both ways, against those each
service's configuration reads)."""

import re
from pathlib import Path


def read_registry(path):
    """services/registry.txt as {"<name>-service": (port, database)}: one
    service a line, `name port database`; `#` starts a comment."""
    services = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 3 or not fields[1].isdigit():
            raise ValueError(f"{path}:{number}: want `name port database`, not {line.strip()!r}")
        services[f"{fields[0]}-service"] = (int(fields[1]), fields[2])
    if not services:
        raise ValueError(f"{path}: no services")
    return services


def documented_variables(repo):
    """The variables the services read: the first column of the table
    `| variable | services | meaning |` of docs/configuration.md."""
    names, in_table = set(), False
    for line in (Path(repo) / "docs" / "configuration.md").read_text().splitlines():
        if line.startswith("| variable | services | meaning |"):
            in_table = True
        elif in_table and not line.startswith("|"):
            break
        elif in_table and not line.startswith("|---"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", line.split("|")[1]))
    if "MONGODB_URI" not in names or "RABBITMQ_URL" not in names:
        raise ValueError(f"docs/configuration.md: no table of the services' variables found (read {sorted(names)})")
    return names
