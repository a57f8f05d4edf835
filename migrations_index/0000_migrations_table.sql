-- The change index's own record of applied migrations (applied by src/store/index/migrations.rs,
-- not by diesel): the index may share the control plane's database, whose
-- __diesel_schema_migrations belongs to migrations/. Run before every migration; safe to run again.
CREATE TABLE IF NOT EXISTS change_index_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
