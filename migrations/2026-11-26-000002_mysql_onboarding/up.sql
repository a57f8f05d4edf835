-- Each server replicates with its own server id; MySQL refuses two replicas with the same one.
-- Ids start high to stay clear of the ids customers give their own servers and replicas.
CREATE SEQUENCE replication_server_ids START WITH 3000000001 MINVALUE 3000000001 MAXVALUE 4294967295;
ALTER TABLE servers ADD COLUMN replication_server_id bigint UNIQUE;
