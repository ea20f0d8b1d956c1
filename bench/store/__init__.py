"""The run store: the row schema (bench.store.rows), the tables (table), the run folder (run), its writer
lock (lock) and the rebuilding of a lost run.json (recover). Knows no study: a study hands it rows."""
