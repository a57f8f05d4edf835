ALTER TABLE servers DROP COLUMN replication_server_id;
DROP SEQUENCE replication_server_ids;
