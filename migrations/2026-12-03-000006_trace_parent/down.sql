ALTER TABLE servers DROP COLUMN trace_parent;
