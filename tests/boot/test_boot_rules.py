"""Pure core: selectors, specificity, tie detection, compiled matching, diff."""

import pytest

from netslate.boot.rules import (
    CompiledRules, Facts, Rule, check_no_ties, could_overlap, diff_rule_sets, find_ties,
    normalize_mac, normalize_selectors, parse_selector_args, specificity,
)
from netslate.errors import UserError

MAC1, MAC2 = "52:54:00:00:00:01", "52:54:00:00:00:02"


def test_boot_normalize_mac_forms():
    assert normalize_mac("52-54-00-AA-bb-01") == "52:54:00:aa:bb:01"
    assert normalize_mac("5254.00aa.bb01") == "52:54:00:aa:bb:01"
    for bad in ("52:54:00:aa:bb", "zz:54:00:aa:bb:01", "../../etc/passwd", "52:54:00:aa:bb:01\nchain x"):
        with pytest.raises(UserError):
            normalize_mac(bad)


def test_boot_selectors_validated():
    sel = parse_selector_args(["mac=52-54-00-00-00-01", "label=rack=r1", "label=role=gpu", "platform=bios", "group=/lab/pool/"])
    assert sel == {"mac": MAC1, "label": {"rack": "r1", "role": "gpu"}, "platform": "pcbios", "group": "/lab/pool"}
    assert specificity(sel) == 5
    for bad in (["colour=red"], ["serial=a$b"], ["group=../etc"], ["label=x"], ["mac=1", "mac=2"], ["product=x\nshell"],
                ["platform=arm"], ["uuid=not-a-uuid"]):
        with pytest.raises(UserError):
            parse_selector_args(bad)


def test_boot_overlap_rules():
    assert could_overlap({"mac": MAC1}, {"arch": "x86_64"})
    assert not could_overlap({"mac": MAC1}, {"mac": MAC2})
    assert could_overlap({"label": {"a": "1"}}, {"label": {"b": "2"}})
    assert not could_overlap({"label": {"a": "1"}}, {"label": {"a": "2"}})
    assert could_overlap({"group": "/lab"}, {"group": "/lab/pool1"})
    assert not could_overlap({"group": "/lab/a"}, {"group": "/lab/b"})
    assert could_overlap({"manufacturer": "QEMU"}, {"manufacturer": "qemu"})


def test_boot_tie_rejected_only_when_same_priority_specificity_and_overlap():
    a = Rule("a", 10, {"arch": "x86_64"}, "p")
    b = Rule("b", 10, {"platform": "efi"}, "p")  # same prio, same specificity, a machine can match both
    c = Rule("c", 10, {"mac": MAC1}, "p")
    with pytest.raises(UserError, match="ties with 'a'"):
        check_no_ties(b, [a])
    assert find_ties(Rule("b", 11, {"platform": "efi"}, "p"), [a]) == []  # other priority
    assert find_ties(Rule("b", 10, {"platform": "efi", "arch": "x86_64"}, "p"), [a]) == []  # more specific
    assert find_ties(Rule("d", 10, {"mac": MAC2}, "p"), [c]) == []  # disjoint MACs
    assert find_ties(Rule("a", 10, {"arch": "i386"}, "p"), [a]) == []  # replacing itself


def test_boot_priority_then_specificity():
    rules = CompiledRules([
        Rule("catchall", 0, {}, "p0"),
        Rule("x86", 0, {"arch": "x86_64"}, "p1"),
        Rule("x86-efi", 0, {"arch": "x86_64", "platform": "efi"}, "p2"),
        Rule("one", 0, {"mac": MAC1, "arch": "x86_64", "platform": "efi"}, "p3"),
        Rule("urgent", 5, {"label": {"role": "kiosk"}}, "p4"),
    ])
    f = lambda **kw: Facts(**{"mac": MAC2, "arch": "x86_64", "platform": "pcbios", **kw})  # noqa: E731
    assert rules.match(f()).name == "x86"
    assert rules.match(f(platform="efi")).name == "x86-efi"
    assert rules.match(f(mac=MAC1, platform="efi")).name == "one"
    assert rules.match(f(mac=MAC1, platform="efi", labels={"role": "kiosk"})).name == "urgent"
    assert rules.match(f(arch="arm64")).name == "catchall"
    ex = rules.explain(f(arch="arm64"))
    assert ex["matched"] == "catchall"
    x86 = next(r for r in ex["rules"] if r["name"] == "x86")
    assert x86["matches"] is False and x86["selectors"] == [{"selector": "arch", "want": "x86_64", "have": "arm64", "match": False}]


def test_boot_group_selector():
    rules = CompiledRules([Rule("lab", 0, {"group": "/lab"}, "p")])
    assert rules.match(Facts(mac=MAC1, group="/lab/pool1")).name == "lab"
    assert rules.match(Facts(mac=MAC1, group="/labx")) is None


def test_boot_many_mac_rules_indexed():
    rules = CompiledRules([Rule(f"m{i}", 0, {"mac": normalize_mac(f"52540000{i:04x}")}, f"p{i}") for i in range(5000)]
                          + [Rule("all", -1, {}, "d")])
    assert rules.match(Facts(mac=normalize_mac("525400001234"))).profile == f"p{0x1234}"
    assert rules.match(Facts(mac="aa:aa:aa:aa:aa:aa")).name == "all"


def test_boot_diff():
    a = [Rule("x", 1, {"arch": "i386"}, "p"), Rule("y", 1, {}, "p")]
    w = [Rule("x", 2, {"arch": "i386"}, "p"), Rule("z", 1, {"mac": MAC1}, "q")]
    d = diff_rule_sets(a, w)
    assert [r["name"] for r in d["added"]] == ["z"]
    assert [r["name"] for r in d["removed"]] == ["y"]
    assert d["changed"][0]["from"]["priority"] == 1 and d["changed"][0]["to"]["priority"] == 2


def test_boot_normalize_selectors_labels_sorted():
    assert normalize_selectors({"label": {"b": "2", "a": "1"}})["label"] == {"a": "1", "b": "2"}


def test_boot_store_validation(ctx):
    from netslate import inventory
    from netslate.boot import store

    with pytest.raises(UserError, match="invalid MAC"):
        inventory.add_machine(ctx, ["not-a-mac"])
    m = inventory.add_machine(ctx, ["52:54:00:00:00:09"], name="pc9")
    with pytest.raises(UserError, match="invalid label value"):
        inventory.label_machine(ctx, "pc9", {"role": "a b"}, [])
    with pytest.raises(UserError):
        store.pin_machine(ctx, "pc9", "desk@9")
    with pytest.raises(UserError, match="needs --image"):
        store.add_profile(ctx, "nope", image="desk")
    store.add_profile(ctx, "disk", kind="local")
    with pytest.raises(UserError, match="unknown selector"):
        store.add_rule(ctx, "bad", {"colour": "red"}, "disk")
    with pytest.raises(UserError, match="no profile"):
        store.add_rule(ctx, "x", {}, "missing")
    with pytest.raises(UserError, match="set by netslate"):
        store.add_profile(ctx, "p", image="desk", ref="1", args=["netslate.image=evil@1"])
    inventory.remove_machine(ctx, str(m["id"]))
    with pytest.raises(UserError, match="no machine"):
        inventory.show_machine(ctx, "pc9")


# Property: whenever one machine matches two rules, could_overlap() said so (ties are never missed),
# and the compiled set's answer equals a brute-force "best (priority, specificity)" search.
from hypothesis import given, settings, strategies as st  # noqa: E402

_vals = {"mac": [MAC1, MAC2], "arch": ["x86_64", "i386"], "platform": ["pcbios", "efi"], "manufacturer": ["QEMU", "Dell"]}
_sel = st.fixed_dictionaries({}, optional={
    **{k: st.sampled_from(v) for k, v in _vals.items()},
    "label": st.dictionaries(st.sampled_from(["room", "role"]), st.sampled_from(["a", "b"]), min_size=1),
    "group": st.sampled_from(["/", "/lab", "/lab/a", "/lab/b", "/office"]),
})
_facts = st.builds(
    Facts, mac=st.sampled_from([MAC1, MAC2]), arch=st.sampled_from(_vals["arch"]), platform=st.sampled_from(_vals["platform"]),
    manufacturer=st.sampled_from(_vals["manufacturer"]),
    labels=st.dictionaries(st.sampled_from(["room", "role"]), st.sampled_from(["a", "b"])),
    group=st.sampled_from(["/", "/lab", "/lab/a", "/lab/b", "/office"]),
)


@settings(max_examples=300, deadline=None)
@given(a=_sel, b=_sel, facts=_facts)
def test_boot_overlap_is_sound(a, b, facts):
    from netslate.boot.rules import selector_matches

    both = all(selector_matches(k, v, facts) for k, v in a.items()) and all(selector_matches(k, v, facts) for k, v in b.items())
    if both:
        assert could_overlap(a, b)


@settings(max_examples=150, deadline=None)
@given(sels=st.lists(st.tuples(_sel, st.integers(0, 2)), max_size=8), facts=_facts)
def test_boot_compiled_matches_brute_force(sels, facts):
    from netslate.boot.rules import selector_matches

    rules: list[Rule] = []
    for i, (sel, prio) in enumerate(sels):
        r = Rule(f"r{i}", prio, sel, "p")
        if not find_ties(r, rules):  # what saving would accept
            rules.append(r)
    got = CompiledRules(rules).match(facts)
    matching = [r for r in rules if all(selector_matches(k, v, facts) for k, v in r.selectors.items())]
    if not matching:
        assert got is None
        return
    best = max((r.priority, r.specificity) for r in matching)
    winners = [r for r in matching if (r.priority, r.specificity) == best]
    assert len(winners) == 1  # no ties can reach boot
    assert got is winners[0]
