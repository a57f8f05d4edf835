-- The W3C traceparent of the call that last started a server's onboarding (registration,
-- a restarting update, ConfirmFirewall, RetryOnboarding), so the steps' spans continue its
-- trace on whichever replica runs them. NULL while traces are off.
ALTER TABLE servers ADD COLUMN trace_parent text CHECK (length(trace_parent) <= 128);
