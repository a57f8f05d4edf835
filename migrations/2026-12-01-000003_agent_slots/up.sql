-- Each agent's count of assigned servers, kept by triggers, so assigning a slot reads one row
-- instead of counting the agent's servers (which grew with every server ever registered).
ALTER TABLE agents ADD COLUMN assigned integer NOT NULL DEFAULT 0;

CREATE FUNCTION servers_agent_slots() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.agent_id IS NOT NULL THEN
        UPDATE agents SET assigned = assigned - 1 WHERE id = OLD.agent_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.agent_id IS NOT NULL THEN
        UPDATE agents SET assigned = assigned + 1 WHERE id = NEW.agent_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER servers_agent_slots_insert AFTER INSERT ON servers
    FOR EACH ROW WHEN (NEW.agent_id IS NOT NULL) EXECUTE FUNCTION servers_agent_slots();
CREATE TRIGGER servers_agent_slots_update AFTER UPDATE OF agent_id ON servers
    FOR EACH ROW WHEN (OLD.agent_id IS DISTINCT FROM NEW.agent_id)
    EXECUTE FUNCTION servers_agent_slots();
CREATE TRIGGER servers_agent_slots_delete AFTER DELETE ON servers
    FOR EACH ROW WHEN (OLD.agent_id IS NOT NULL) EXECUTE FUNCTION servers_agent_slots();

-- The count, last: the triggers above hold servers' SHARE ROW EXCLUSIVE lock until commit, so no
-- replica still running the previous release can change an agent_id between the count and the
-- triggers (a change in between would be counted wrong for good).
UPDATE agents a SET assigned = (SELECT count(*) FROM servers s WHERE s.agent_id = a.id);
