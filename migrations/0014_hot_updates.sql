-- Rows updated in place many times per workload leave room on their page, so that PostgreSQL
-- can write the new version beside the old one without touching any index (a HOT update):
-- the stream-position claims (every consumer advances one per stream per batch), the stream
-- versions (every append), and the resource-manager's run rows. None of the updated columns is
-- indexed, which HOT also requires. Existing pages keep their layout; new ones use this.
ALTER TABLE consumer_stream_positions SET (fillfactor = 50);
ALTER TABLE streams SET (fillfactor = 50);
ALTER TABLE rm_runs SET (fillfactor = 50);
