"""schemathesis hooks for tests/api/rest_fuzz.rs: the formats of the service's own that no JSON
Schema keyword can express, taught to the generator so the values it builds as valid are valid.

- `ssh-private-key` (SshTunnel.private_key): an armoured key that parses. The generator picks
  one of the keys the tests use (DBTRAIL_FUZZ_PRIVATE_KEYS, separated by blank-line-free "\\n\\n").
"""
import os

import schemathesis
from hypothesis import strategies as st

KEYS = [key for key in os.environ["DBTRAIL_FUZZ_PRIVATE_KEYS"].split("\n\n") if key.strip()]

schemathesis.openapi.format("ssh-private-key", st.sampled_from(KEYS))
