DROP TABLE secrets_key_checks;
