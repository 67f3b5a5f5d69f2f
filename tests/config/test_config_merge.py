"""Pure core: merge rules, provenance properties, schema validation, tree paths."""

import json

import pytest
from hypothesis import given, settings, strategies as st

from netslate.config import merge, schema, tree
from netslate.errors import UserError

# ---------------------------------------------------------------- rules by example


def test_maps_merge_deeply_and_nearer_scalar_wins():
    doc, prov = merge.resolve([
        ("/", {"network": {"mode": "dhcp", "interfaces": {"eth0": {"mtu": 1500}}}, "timezone": "UTC"}),
        ("/a", {"network": {"interfaces": {"eth0": {"mtu": 9000}, "eth1": {"dhcp": True}}}}),
    ])
    assert doc == {"network": {"mode": "dhcp", "interfaces": {"eth0": {"mtu": 9000}, "eth1": {"dhcp": True}}}, "timezone": "UTC"}
    assert prov == {"/network/mode": "/", "/network/interfaces/eth0/mtu": "/a", "/network/interfaces/eth1/dhcp": "/a", "/timezone": "/"}


def test_lists_replace_append_and_remove():
    root = ("/", {"users": [{"name": "root"}, {"name": "ops", "uid": 1}], "kernel_args": ["quiet"]})
    doc, _ = merge.resolve([root, ("/a", {"users": [{"name": "x"}]})])
    assert doc["users"] == [{"name": "x"}]
    doc, prov = merge.resolve([root, ("/a", {"users+": [{"name": "bob"}, {"name": "ops", "uid": 2}], "kernel_args+": ["quiet", "nomodeset"]})])
    assert doc["users"] == [{"name": "root"}, {"name": "ops", "uid": 2}, {"name": "bob"}]  # same identity replaced in place
    assert doc["kernel_args"] == ["quiet", "nomodeset"]  # a scalar already present is not added twice
    assert prov["/users/0"] == "/" and prov["/users/1"] == "/a" and prov["/users/2"] == "/a"
    doc, prov = merge.resolve([root, ("/a", {"users-": ["root"], "kernel_args-": ["quiet"]})])
    assert doc["users"] == [{"name": "ops", "uid": 1}] and prov["/users/0"] == "/"
    assert doc["kernel_args"] == [] and prov["/kernel_args"] == "/a"
    # remove runs before append within one document
    doc, _ = merge.resolve([root, ("/a", {"users-": ["ops"], "users+": [{"name": "ops", "uid": 3}]})])
    assert doc["users"] == [{"name": "root"}, {"name": "ops", "uid": 3}]


def test_null_removes_inherited_value():
    doc, prov = merge.resolve([("/", {"timezone": "UTC", "dns": {"servers": ["1.1.1.1"], "search": ["x"]}}), ("/a", {"timezone": None, "dns": {"search": None}})])
    assert doc == {"dns": {"servers": ["1.1.1.1"]}}
    assert "/timezone" not in prov and "/dns/search/0" not in prov


def test_merge_is_bounded():
    deep: dict = {}
    cur = deep
    for _ in range(60):
        cur["x"] = {}
        cur = cur["x"]
    cur["y"] = 1
    with pytest.raises(UserError, match="nested deeper"):
        merge.resolve([("/", deep)])
    with pytest.raises(UserError, match="nested deeper"):
        schema.validate_document({"extra": deep})
    with pytest.raises(UserError, match="limit"):
        schema.validate_document({"extra": {"blob": "x" * (schema.MAX_DOCUMENT_BYTES + 1)}})


# ---------------------------------------------------------------- properties

keys = st.sampled_from(["a", "b", "c", "users", "k/x", "t~1"])
scalars = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.booleans())
items = st.one_of(scalars, st.fixed_dictionaries({"name": st.sampled_from(["u1", "u2", "u3"])}, optional={"uid": st.integers(0, 3)}))
values = st.recursive(
    st.one_of(scalars, st.none(), st.lists(items, max_size=3)),
    lambda children: st.dictionaries(keys, children, max_size=3),
    max_leaves=8,
)


@st.composite
def documents(draw):
    doc = draw(st.dictionaries(keys, values, max_size=4))
    for k in draw(st.lists(st.sampled_from(["users", "c"]), max_size=2, unique=True)):
        doc.pop(k, None)
        doc[k + draw(st.sampled_from(["+", "-"]))] = draw(st.lists(items, max_size=3))
    return doc


chains = st.lists(documents(), min_size=1, max_size=5).map(lambda docs: [(f"/n{i}", d) for i, d in enumerate(docs)])


def _leaf_values(doc, prefix=""):
    """Every leaf pointer the provenance must cover."""
    out = {}
    if prefix == "" and doc == {}:
        return out
    if isinstance(doc, dict) and doc:
        for k, v in doc.items():
            out.update(_leaf_values(v, prefix + "/" + merge.escape(k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out[f"{prefix}/{i}"] = v
        if not doc:
            out[prefix] = doc
    else:
        out[prefix] = doc
    return out


def _source_holds(source_doc, ptr, value):
    """True if the named source document really sets `value` at `ptr` (list items: in its list or append form)."""
    parts = [merge.unescape(p) for p in ptr.split("/")[1:]]
    cur = source_doc
    for i, part in enumerate(parts):
        if not isinstance(cur, dict):
            return False
        rest = parts[i + 1:]
        if len(rest) == 1 and rest[0].isdigit():  # list item: the source lists it in `k` or `k+`
            pool = (cur.get(part) if isinstance(cur.get(part), list) else []) + (cur.get(part + "+") or [])
            return value in pool
        if not rest:  # scalar / empty map / empty list leaf
            if part in cur:
                return cur[part] == value
            return (part + "-") in cur or (part + "+") in cur  # a form that left an empty list
        cur = cur.get(part)
    return False


@settings(max_examples=300, deadline=None)
@given(chains)
def test_resolve_is_deterministic_and_provenance_is_true(chain):
    doc1, prov1 = merge.resolve(chain)
    # same input, and the same documents with their keys in another order: same answer
    shuffled = [(src, dict(reversed(list(d.items())))) for src, d in chain]
    doc2, prov2 = merge.resolve(shuffled)
    assert json.dumps(doc1, sort_keys=True) == json.dumps(doc2, sort_keys=True)
    assert prov1 == prov2
    docs = dict(chain)
    leaves = _leaf_values(doc1)
    assert set(prov1) == set(leaves), "every leaf has exactly one stated source"
    for ptr, src in prov1.items():
        assert _source_holds(docs[src], ptr, merge.get_pointer(doc1, ptr)), (ptr, src)


@settings(max_examples=200, deadline=None)
@given(chains)
def test_incremental_merge_equals_full_resolve(chain):
    doc, prov = {}, {}
    for src, d in chain:
        doc, prov = merge.merge(doc, prov, d, src)
    assert (doc, prov) == merge.resolve(chain)


# ---------------------------------------------------------------- schema and tree


def test_invalid_document_names_path_and_reason_without_value():
    with pytest.raises(UserError) as e:
        schema.validate_document({"users+": [{"name": "ok"}, {"name": "ok2", "uid": -1}], "secrets": {"token": 12345}})
    msg = str(e.value)
    assert "/users+/1/uid" in msg and "greater than or equal to 0" in msg
    assert "/secrets/token" in msg and "12345" not in msg
    with pytest.raises(UserError, match="/files/0: Value error, give exactly one of 'content' or 'template'"):
        schema.validate_document({"files": [{"path": "/etc/x"}]})
    with pytest.raises(UserError, match="/bogus: Extra inputs are not permitted"):
        schema.validate_document({"bogus": 1})
    with pytest.raises(UserError, match="cannot combine"):
        schema.validate_document({"users": [], "users+": []})
    with pytest.raises(UserError, match="/timezone-: Input should be a valid string"):
        schema.validate_document({"timezone-": ["UTC"]})  # only lists have the remove form
    assert schema.validate_document({"users-": ["alice"], "users+": [{"name": "bob"}], "dns": {"servers-": ["x"]}})


def test_json_schema_is_published_shape():
    s = schema.json_schema()
    assert "users" in s["properties"] and "secrets" in s["properties"]


def test_tree_paths():
    assert tree.normalize("/site-a//c1/") == "/site-a/c1"
    assert tree.ancestors("/a/b/c") == ["/", "/a", "/a/b", "/a/b/c"]
    assert [tree.level(p) for p in ["/", "/a", "/a/b", "/a/b/c", "/a/b/c/d", "/a/b/c/d/e", "@3"]] == ["root", "site", "cluster", "pool", "folder", "folder", "machine"]
    assert tree.under("/a/b", "/a") and not tree.under("/ab", "/a") and tree.under("/x", "/")
    for bad in ["a/b", "/a/../b", "/a b"]:
        with pytest.raises(UserError):
            tree.normalize(bad)
