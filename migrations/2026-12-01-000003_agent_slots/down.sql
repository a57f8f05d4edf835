DROP TRIGGER servers_agent_slots_delete ON servers;
DROP TRIGGER servers_agent_slots_update ON servers;
DROP TRIGGER servers_agent_slots_insert ON servers;
DROP FUNCTION servers_agent_slots();
ALTER TABLE agents DROP COLUMN assigned;
