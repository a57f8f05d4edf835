-- History compaction finds the old revisions without reading the whole table.
CREATE INDEX onboarding_history_created_at ON onboarding_history (created_at);
