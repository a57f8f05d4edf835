-- stream_options.exclude_tables: tables never captured (streaming.md §6). Existing servers
-- exclude none.
ALTER TABLE servers ADD COLUMN stream_exclude_tables text[] NOT NULL DEFAULT '{}';
