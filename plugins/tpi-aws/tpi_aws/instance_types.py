"""The EC2 instance families and the sizes each one sells, checked without a request.

Taken from the ``InstanceType`` enum of botocore 1.40.61's EC2 model (every family, previous
generations too); refresh it from a newer botocore when AWS adds sizes. Each entry lists the
families that sell the same sizes (an indented line continues the one above). A family
missing here is newer than the table, and its types are let through on their shape alone:
the table ageing never blocks a user.
"""

from __future__ import annotations

import re

_TABLE = """
t1: micro
t2 t3 t3a t4g: nano micro small medium large xlarge 2xlarge
m1: small medium large xlarge
m2: xlarge 2xlarge 4xlarge
m3: medium large xlarge 2xlarge
m4: large xlarge 2xlarge 4xlarge 10xlarge 16xlarge
c1: medium xlarge
c3 c4 r3: large xlarge 2xlarge 4xlarge 8xlarge
a1: medium large xlarge 2xlarge 4xlarge metal
m5 m5d m5dn m5n r5 r5b r5d r5dn r5n: large xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge 24xlarge
    metal
m5a m5ad c5a c5ad r5a r5ad: large xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge 24xlarge
m5zn z1d: large xlarge 2xlarge 3xlarge 6xlarge 12xlarge metal
c5 c5d: large xlarge 2xlarge 4xlarge 9xlarge 12xlarge 18xlarge 24xlarge metal
c5n: large xlarge 2xlarge 4xlarge 9xlarge 18xlarge metal
m6i m6id m6idn m6in c6i c6id c6in r6i r6id r6idn r6in i4i: large xlarge 2xlarge 4xlarge 8xlarge
    12xlarge 16xlarge 24xlarge 32xlarge metal
m6a c6a r6a: large xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge 24xlarge 32xlarge 48xlarge metal
m6g m6gd m7g m7gd c6g c6gd c7g c7gd c7gn r6g r6gd r7g r7gd x2gd: medium large xlarge 2xlarge 4xlarge
    8xlarge 12xlarge 16xlarge metal
c6gn: medium large xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge
m7i c7i r7i i7i: large xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge 24xlarge 48xlarge metal-24xl
    metal-48xl
m7i-flex c7i-flex m8i-flex c8i-flex r8i-flex: large xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge
m7a c7a r7a: medium large xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge 24xlarge 32xlarge
    48xlarge metal-48xl
m8g m8gd m8a c8g c8gd c8gn r8g r8gd r8gn x8g: medium large xlarge 2xlarge 4xlarge 8xlarge 12xlarge
    16xlarge 24xlarge 48xlarge metal-24xl metal-48xl
m8i c8i r8i: large xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge 24xlarge 32xlarge 48xlarge
    96xlarge metal-48xl metal-96xl
r4 i4g im4gn: large xlarge 2xlarge 4xlarge 8xlarge 16xlarge
r7iz: large xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge 32xlarge metal-16xl metal-32xl
r8gb: medium large xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge 24xlarge metal-24xl
x1: 16xlarge 32xlarge
x1e: xlarge 2xlarge 4xlarge 8xlarge 16xlarge 32xlarge
x2idn: 16xlarge 24xlarge 32xlarge metal
x2iedn: xlarge 2xlarge 4xlarge 8xlarge 16xlarge 24xlarge 32xlarge metal
x2iezn: 2xlarge 4xlarge 6xlarge 8xlarge 12xlarge metal
u-3tb1: 56xlarge
u-6tb1: 56xlarge 112xlarge metal
u-9tb1 u-12tb1 u-18tb1 u-24tb1: 112xlarge metal
u7i-6tb u7i-8tb: 112xlarge
u7i-12tb u7ib-12tb u7in-16tb u7in-24tb u7in-32tb: 224xlarge
u7inh-32tb: 480xlarge
d2 d3 i2: xlarge 2xlarge 4xlarge 8xlarge
d3en: xlarge 2xlarge 4xlarge 6xlarge 8xlarge 12xlarge
h1: 2xlarge 4xlarge 8xlarge 16xlarge
i3: large xlarge 2xlarge 4xlarge 8xlarge 16xlarge metal
i3en: large xlarge 2xlarge 3xlarge 6xlarge 12xlarge 24xlarge metal
i7ie i8ge: large xlarge 2xlarge 3xlarge 6xlarge 12xlarge 18xlarge 24xlarge 48xlarge metal-24xl
    metal-48xl
i8g: large xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge 24xlarge 48xlarge metal-24xl
is4gen: medium large xlarge 2xlarge 4xlarge 8xlarge
p2: xlarge 8xlarge 16xlarge
p3: 2xlarge 8xlarge 16xlarge
p5: 4xlarge 48xlarge
p3dn p4d p4de dl1 dl2q: 24xlarge
p5e p5en p6-b200 trn2 hpc6a: 48xlarge
p6e-gb200: 36xlarge
g2: 2xlarge 8xlarge
g3 hpc7g: 4xlarge 8xlarge 16xlarge
g3s: xlarge
g4dn: xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge metal
g4ad: xlarge 2xlarge 4xlarge 8xlarge 16xlarge
g5 g6 g6e: xlarge 2xlarge 4xlarge 8xlarge 12xlarge 16xlarge 24xlarge 48xlarge
g5g: xlarge 2xlarge 4xlarge 8xlarge 16xlarge metal
g6f: large xlarge 2xlarge 4xlarge
gr6: 4xlarge 8xlarge
cc1 cg1 gr6f hi1: 4xlarge
cc2 cr1 hs1: 8xlarge
inf1: xlarge 2xlarge 6xlarge 24xlarge
inf2: xlarge 8xlarge 24xlarge 48xlarge
trn1: 2xlarge 32xlarge
trn1n hpc6id: 32xlarge
f1: 2xlarge 4xlarge 16xlarge
f2: 6xlarge 12xlarge 48xlarge
vt1: 3xlarge 6xlarge 24xlarge
hpc7a: 12xlarge 24xlarge 48xlarge 96xlarge
mac1 mac2 mac2-m1ultra mac2-m2 mac2-m2pro mac-m4 mac-m4pro: metal
"""

SHAPE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*"
                   r"\.(?:nano|micro|small|medium|large|\d*xlarge|metal(?:-\d+xl)?)$")
"""``family.size`` as every EC2 type is spelled (``m7i.2xlarge``, ``u-6tb1.metal``)."""


def _families(table: str) -> dict[str, tuple[str, ...]]:
    families: dict[str, tuple[str, ...]] = {}
    for line in filter(None, re.sub(r"\n[ \t]+", " ", table).splitlines()):
        names, _, sizes = line.partition(":")
        families.update(dict.fromkeys(names.split(), tuple(sizes.split())))
    return families


FAMILIES = _families(_TABLE)
"""Family -> the sizes it sells, smallest first."""
