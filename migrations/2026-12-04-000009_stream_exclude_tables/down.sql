ALTER TABLE servers DROP COLUMN stream_exclude_tables;
