DROP TRIGGER servers_webhook_events ON servers;
DROP FUNCTION record_webhook_events();
DROP FUNCTION webhook_server(servers);
DROP FUNCTION webhook_time(timestamptz);
DROP TABLE webhook_deliveries;
DROP TABLE webhook_events;
DROP TABLE webhooks;
