"""Training jobs that span hosts: one row per host slot of a job's run (slot 0 is the rendezvous
host that claimed the job and published its address; the others are claimed by more hosts).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "slots",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("run", sa.Integer, primary_key=True),
        sa.Column("slot", sa.Integer, primary_key=True),
        sa.Column("host", sa.String(64), nullable=True),
        sa.Column("addr", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("claimed_at", sa.Float, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("slots")
