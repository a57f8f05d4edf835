-- Keys every replica of a deployment shares, made once by the first replica that needs one:
-- the page-token HMAC key (a token issued by one replica is good on all of them).
CREATE TABLE deployment_keys (
    purpose text PRIMARY KEY,
    key bytea NOT NULL CHECK (length(key) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
