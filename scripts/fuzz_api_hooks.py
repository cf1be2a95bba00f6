"""schemathesis hooks for scripts/fuzz-api.sh.

The OpenAPI document describes a policy as a free-form object (its fields
are documented in mirror-policies/README.md, not in the schema), so
schemathesis alone almost never produces a policy the daemon accepts, and
the paths that apply a set to the datapath (TCX attach, map writes,
generation flips, persisting files) would go unfuzzed. These hooks replace,
for about half of the generated cases, the body (and path name) of the
policy and tap operations with a policy or tap request that is valid or
one or two fields away from valid, and point path parameters at names that
exist in the testbed.

Every choice is derived from the case schemathesis generated (a seeded
`random.Random` of its repr), so a case replays identically and shrinking
works. Nothing here filters responses or failures: every check stays in
force.
"""

import json
import random

import schemathesis

POLICY_NAMES = ["seed", "web", "p", "a-b_c", "x" * 63, "x" * 64, "Bad", "-x", "", "\u00fc", "p/q"]
VALID_TAPS = ["vm1-tap", "vm2-tap", "vm*-tap", "vm?-tap", "vm[12]-tap", "vnet*", "br0", "vm9-tap"]
IFACES = ["vm1-tap", "vm2-tap", "br0", "mon0", "vm9-tap", "lo", "x" * 15, "x" * 16, "a b", "..", "."]
OUTPUT_IFACES = ["mon0", "nosuch0", "mon1"]
CAPTURE_NAMES = ["cap", "web", "a.b-c_1", "../x", "/abs", "x" * 65]
V4 = ["10.0.0.0/24", "10.0.0.1/32", "10.0.0.2/32", "0.0.0.0/0", "192.0.2.0/24"]
V6 = ["fd00::/64", "fd00::1/128", "fd00::2/128", "::/0"]
PORTS = [53, 80, 443, 1, 65535, "1000-2000", "0-65535", 7001]
FLAGS = ["syn", "ack", "fin", "rst", "psh", "urg", "ece", "cwr"]

# One field out of its domain, or a combination the daemon must reject
# (each a (path, value) applied to a valid policy).
MUTATIONS = [
    ("version", 2), ("version", "1"), ("priority", 65536), ("priority", -1),
    ("taps", []), ("taps", ["["]), ("taps", ["x" * 16]), ("taps", ["bad name"]), ("taps", "vm1-tap"),
    ("direction", "sideways"), ("direction", "Both"), ("enabled", "yes"),
    ("outputs", []), ("outputs", [{"interface": "mon0", "vlan": i + 1} for i in range(9)]),
    ("outputs", [{"interface": "mon0", "vlan": 0}]), ("outputs", [{"interface": "mon0", "vlan": 4095}]),
    ("outputs", [{"interface": "mon0", "vlan": -3}]), ("outputs", [{"interface": "", "vlan": 5}]),
    ("outputs", [{"interface": "mon*", "vlan": 5}]), ("outputs", [{"pcap": "cap"}]),
    ("outputs", [{"pcap": "cap", "vlan": 3}]), ("outputs", [{"interface": "mon0", "vlan": 7}] * 2),
    ("outputs", [{"vlan": 7}]), ("sample_one_in", 0), ("sample_one_in", 2), ("snaplen", 64),
    ("snaplen", 13), ("snaplen", 9217), ("outputs", [{"pcap": "cap"}, {"pcap": "cap"}]),
    ("rate_limit", {"pps": 10}), ("rate_limit", {"x": 1}), ("unknown_field", True),
    ("match", {"src": []}), ("match", {"src": ["300.0.0.0/8"]}), ("match", {"dst": ["fd00::/129"]}),
    ("match", {"src": ["10.0.0.0/24"], "dst": ["fd00::/64"]}), ("match", {"ether_type": "ipv6", "src": ["10.0.0.0/8"]}),
    ("match", {"ether_type": "arp", "protocol": "tcp"}), ("match", {"ether_type": 65536}),
    ("match", {"protocol": 256}), ("match", {"protocol": "sctp"}), ("match", {"protocol": "icmp", "dst_ports": [80]}),
    ("match", {"dst_ports": [70000]}), ("match", {"dst_ports": ["2000-1000"]}), ("match", {"dst_ports": []}),
    ("match", {"tcp_flags": ["bogus"]}), ("match", {"tcp_flags": ["syn", "!syn"]}),
    ("match", {"protocol": "udp", "tcp_flags": ["syn"]}), ("match", {"bidirectional": "yes"}), ("match", {"x": 1}),
    ("match", []),
]


def _rng(*parts):
    return random.Random(json.dumps(parts, sort_keys=True, default=repr))


def _maybe(rng, p=0.5):
    return rng.random() < p


def valid_match(rng):
    m = {}
    fam = rng.choice([None, "ipv4", "ipv6"])
    if fam and _maybe(rng, 0.5):
        m["ether_type"] = rng.choice([fam, 2048 if fam == "ipv4" else 34525])
    proto = rng.choice([None, "tcp", "udp", "icmp", "icmpv6", 6, 17])
    if proto == "icmp":
        fam = "ipv4" if fam is None else fam
        if fam == "ipv6":
            proto = "icmpv6"
    if proto == "icmpv6":
        fam = "ipv6" if fam is None else fam
        if fam == "ipv4":
            proto = "icmp"
    pool = V4 if fam == "ipv4" else V6 if fam == "ipv6" else rng.choice([V4, V6])
    if fam is not None and "ether_type" not in m and _maybe(rng, 0.3):
        m["ether_type"] = fam
    for side in ("src", "dst"):
        if _maybe(rng, 0.35):
            m[side] = rng.sample(pool, rng.randint(1, 2))
    if proto is not None:
        m["protocol"] = proto
    if proto in (None, "tcp", "udp", 6, 17):
        for side in ("src_ports", "dst_ports"):
            if _maybe(rng, 0.3):
                m[side] = rng.sample(PORTS, rng.randint(1, 3))
    if proto in (None, "tcp", 6) and _maybe(rng, 0.25):
        m["tcp_flags"] = [f if _maybe(rng) else "!" + f for f in rng.sample(FLAGS, rng.randint(1, 3))]
    if _maybe(rng, 0.2):
        m["bidirectional"] = True
    return m


def policy(rng, name):
    """A valid policy (about 70 %), or a valid one with one mutation."""
    outs = []
    for iface in rng.sample(OUTPUT_IFACES, rng.choice([1, 1, 1, 2, 3])):
        o = {"interface": iface}
        if _maybe(rng, 0.85):
            o["vlan"] = rng.choice([rng.randint(1, 4094), rng.randint(100, 110), 1, 4094])
        outs.append(o)
    if _maybe(rng, 0.25):
        outs.append({"pcap": rng.choice(CAPTURE_NAMES)})
    p = {
        "version": 1,
        "name": name,
        "priority": rng.choice([100, 0, 1, 65535, rng.randint(0, 1000)]),
        "enabled": _maybe(rng, 0.85),
        "taps": rng.sample(VALID_TAPS, rng.randint(1, 2)),
        "direction": rng.choice(["ingress", "egress", "both"]),
        "outputs": outs,
    }
    if _maybe(rng, 0.7):
        p["match"] = valid_match(rng)
    if _maybe(rng, 0.3):
        field, value = rng.choice(MUTATIONS)
        p[field] = value
    return p


def _known(rng, value, pool, p=0.6):
    """Replace a generated path value by a known one, part of the time."""
    return rng.choice(pool) if _maybe(rng, p) else value


@schemathesis.hook
def map_case(context, case):
    method = str(case.method).upper()
    path = case.path
    body = getattr(case, "body", None)
    rng = _rng(method, path, case.path_parameters, case.query, repr(body))
    if path == "/api/v1/captures/{name}/stream":
        # A live stream of an existing capture never ends by itself: every
        # case bounds it (1-2 s), and part of them name captures the fuzzed
        # policies create.
        q = dict(case.query or {})
        q["seconds"] = rng.choice([1, 2])
        case.query = q
        if _maybe(rng, 0.5):
            case.path_parameters["name"] = rng.choice(CAPTURE_NAMES[:3])
        return case
    if not _maybe(rng, 0.5):
        return case  # leave half of the cases exactly as generated
    if path == "/api/v1/policies/{name}":
        name = _known(rng, case.path_parameters.get("name", ""), POLICY_NAMES[:4], 0.7)
        if not isinstance(name, str):
            return case
        case.path_parameters["name"] = name
        if method == "PUT":
            body_name = name if _maybe(rng, 0.9) else rng.choice(POLICY_NAMES)
            case.body = policy(rng, body_name)
    elif path == "/api/v1/policies" and method == "PUT":
        n = rng.choice([0, 1, 2, 3, 5])
        names = [rng.choice(POLICY_NAMES[:5]) for _ in range(n)]
        case.body = {"policies": [policy(rng, nm) for nm in names]}
    elif path == "/api/v1/taps/{iface}":
        case.path_parameters["iface"] = _known(rng, case.path_parameters.get("iface", ""), IFACES, 0.7)
        if method == "PUT" and _maybe(rng, 0.8):
            case.body = {"directions": rng.sample(["ingress", "egress", "ingress", "egress", "both", ""], rng.randint(0, 2))}
    return case
