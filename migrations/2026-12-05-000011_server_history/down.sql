DROP TRIGGER servers_changed ON servers;
DROP TRIGGER servers_registered ON servers;
DROP FUNCTION record_server_change();
DROP FUNCTION server_snapshot(servers);
DROP TABLE server_history;
DROP TABLE server_revisions;
