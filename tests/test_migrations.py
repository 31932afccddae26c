"""The store's schema comes from Alembic revisions; upgrading keeps existing tables."""

from __future__ import annotations

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from profiler_service import store
from profiler_service.db import MIGRATIONS, make_engine, migrate, session_factory
from profiler_service.timing import LatencyStats


def head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def test_fresh_database_gets_the_whole_schema_in_wal_mode(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    migrate(engine)
    assert {"devices", "shapes", "points", "jobs", "alembic_version"} <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head_revision()


def test_upgrading_again_keeps_the_points(tmp_path):
    url = f"sqlite:///{tmp_path / 'b.db'}"
    engine = make_engine(url)
    migrate(engine)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        device = store.ensure_device(s, "fp", "onnxruntime", {})
        shape = store.ensure_shape(s, "linear-t1-b1-fp32")
        store.add_point(s, device, shape, 8, 8, LatencyStats(1.0, 0.9, 1.1, 20))
        store.add_point(s, device, shape, 8, 8, LatencyStats(9.0, 9.0, 9.0, 20))  # duplicate ignored
    engine.dispose()

    reopened = make_engine(url)
    migrate(reopened)
    with session_factory(reopened)() as s:
        points = store.points_of(s, device, shape)
        assert [(p.cin, p.cout, p.median_ms) for p in points] == [(8, 8, 1.0)]
        assert points[0].measured_at.tzinfo is not None
