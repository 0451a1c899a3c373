-- cranium metadata store, SQLite, version 5: which daemon works on a request, until when (renewed
-- while it works on it), so that two daemons never both start one.
ALTER TABLE requests ADD COLUMN owner TEXT;
ALTER TABLE requests ADD COLUMN owner_until TEXT;
