-- One check value per secrets key a replica has sealed with: a constant sealed (AES-256-GCM)
-- under that key, tagged with its key id. A replica whose keys open none of them was started
-- with another key than the deployment's and refuses to start.
CREATE TABLE secrets_key_checks (
    key_id text PRIMARY KEY,
    check_value bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
