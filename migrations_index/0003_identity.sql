-- The index's own id (docs/archive.md "Growing the index"): with several --index-database-url,
-- the control plane records a server's shard by this id, not by the URL's place in the list, so a
-- reordered list or a moved database still finds each server's events. One row, made once.
CREATE TABLE index_identity (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO index_identity DEFAULT VALUES;
