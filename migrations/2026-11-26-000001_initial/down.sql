DROP TABLE idempotency_keys;
DROP TABLE onboarding_history;
DROP TABLE servers;
DROP TABLE agents;
DROP TABLE api_keys;
DROP TABLE tenants;
