"""Pure domain: states, records, retry policies, serialization and clocks. No I/O."""
