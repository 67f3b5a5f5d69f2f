"""Inventory: the machines themselves, below every other part.

Owns the `machines` and `machine_macs` tables (models in `netslate.store.models`): identity (id,
name, MACs, SMBIOS UUID, serial, manufacturer/product), labels, hostname, placement (`group`, the
config tree path), approval state, first/last seen, status facts reported by agents, and the
machine credential hash. It is the only writer of those tables, and `resolve(session, ident)` is the
one way any part turns what a user typed into a machine. See docs/inventory.md.

Imports only the store and base modules; boot, config, fleet and desktops call it.
"""

from netslate.inventory.idents import (
    FORMS,
    check_hostname,
    check_label,
    forms,
    normalize_group,
    normalize_mac,
    normalize_text,
    normalize_uuid,
)
from netslate.inventory.store import (
    GENERATION_SQL,
    add_machine,
    approve_machine,
    by_mac,
    by_uuid,
    count_pending,
    discover_machine,
    fill_facts,
    find,
    generation,
    identify,
    label_machine,
    list_machines,
    machine_dict,
    machine_id,
    machine_ids,
    mark_seen,
    place,
    record_report,
    record_reports,
    remove_machine,
    report_rows,
    resolve,
    TRUST_LEVELS,
    set_credential,
    set_trust,
    show_machine,
)

__all__ = [
    "FORMS", "GENERATION_SQL", "add_machine", "approve_machine", "by_mac", "by_uuid", "count_pending", "check_hostname", "check_label",
    "discover_machine", "fill_facts", "find", "forms", "generation", "identify", "label_machine", "list_machines",
    "machine_dict", "machine_id", "machine_ids", "mark_seen", "normalize_group", "normalize_mac", "normalize_text",
    "normalize_uuid", "place", "record_report", "record_reports", "remove_machine", "report_rows", "resolve", "set_credential", "set_trust", "show_machine", "TRUST_LEVELS",
]
