"""Forest units keep their bounding box, so a new unit is checked only against its neighbours.

Registering a unit used to read, parse and measure every other unit's boundary (each up to
100,000 positions) while holding the ledger's lock: with a few dozen detailed units, one
registration held every write of the registry for longer than the lock timeout.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op
from shapely.geometry import shape

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SIDES = ("west", "south", "east", "north")
PAGE = 100


def upgrade() -> None:
    # A default fills the rows already there (SQLite adds a NOT NULL column only with one);
    # each is then set from the unit's boundary.
    for side in SIDES:
        op.add_column(
            "forest_unit", sa.Column(side, sa.Float, nullable=False, server_default="0")
        )
    bind = op.get_bind()
    # PAGE units at a time, each up to 100,000 positions: memory is a page's, not the table's.
    last = ""
    while units := bind.execute(
        sa.text("SELECT id, boundary FROM forest_unit WHERE id > :last ORDER BY id LIMIT :n"),
        {"last": last, "n": PAGE},
    ).all():
        for unit_id, boundary in units:
            bounds = dict(zip(SIDES, shape(json.loads(boundary)).bounds, strict=True))
            bind.execute(
                sa.text(
                    "UPDATE forest_unit SET west = :west, south = :south, east = :east, "
                    "north = :north WHERE id = :id"
                ),
                {**bounds, "id": unit_id},
            )
        last = units[-1][0]
    if bind.dialect.name == "postgresql":
        for side in SIDES:
            op.alter_column("forest_unit", side, server_default=None)  # every insert names it


def downgrade() -> None:
    raise NotImplementedError("registry state is never dropped by a migration")
