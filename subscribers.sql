-- bulletin: the subscriber store (SQLite). The complete schema.
--
-- Embedded in the binary (src/store/schema.rs) and applied when the database
-- opens. Convention:
--   * The file is a sequence of numbered steps. A line `-- step N: title`
--     starts step N; steps are numbered 1, 2, 3 ... without gaps.
--   * `PRAGMA user_version` records the last step applied. On open, every step
--     above it runs, each in one transaction together with setting
--     user_version to its number, so a step is applied entirely or not at all.
--   * Applied steps are never edited: a change to the schema is a new step at
--     the end. Statements use IF NOT EXISTS where they can, so running a step
--     twice is harmless too; a one-line `ALTER TABLE T ADD COLUMN C ...;` is
--     left out when the column exists (store::schema), for the same reason.
--
-- Conventions inside the tables: times are INTEGER unix seconds (UTC);
-- booleans are INTEGER 0/1; email addresses are stored in the canonical form
-- of `address::normalize` (lower case, ASCII domain).

-- step 1: subscribers, lists, subscriptions, campaigns, deliveries, events, suppressions, settings

-- Mailing lists. `slug` is what campaign files name (`list = "news"`).
CREATE TABLE IF NOT EXISTS lists (
    id            INTEGER PRIMARY KEY,
    slug          TEXT    NOT NULL UNIQUE,
    name          TEXT    NOT NULL,
    description   TEXT    NOT NULL DEFAULT '',
    -- New sign-ups start `pending` until they confirm by email.
    double_opt_in INTEGER NOT NULL DEFAULT 0 CHECK (double_opt_in IN (0, 1)),
    -- Shown on the sign-up page and in the preference center.
    public        INTEGER NOT NULL DEFAULT 0 CHECK (public IN (0, 1)),
    created_at    INTEGER NOT NULL
);

-- People. One row per address, whatever the number of lists.
-- `status` is about the person, across lists:
--   active        may receive mail on the lists they confirmed
--   unsubscribed  left every list; never resubscribed by an import
--   bounced       the address does not work; never mailed again
--   complained    marked a bulletin as spam; never mailed again
--   erased        personal data deleted (`subscribers forget`): email is
--                 NULL, name and attributes empty; the row stays so that
--                 delivery counts stay true.
CREATE TABLE IF NOT EXISTS subscribers (
    id          INTEGER PRIMARY KEY,
    email       TEXT    UNIQUE COLLATE NOCASE,
    -- sha256 hex of email (see suppressions); NULL once erased. Never
    -- searched (the suppression check goes from the person to the hash), so
    -- not indexed: an index of random keys would slow imports for nothing.
    email_hash  TEXT,
    name        TEXT    NOT NULL DEFAULT '',
    -- JSON object of strings: every extra column of an import.
    attributes  TEXT    NOT NULL DEFAULT '{}',
    status      TEXT    NOT NULL DEFAULT 'active'
                CHECK (status IN ('active', 'unsubscribed', 'bounced', 'complained', 'erased')),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    CHECK ((status = 'erased') = (email IS NULL))
);

-- Who is on which list, and in what state.
--   pending       signed up to a double opt-in list, not confirmed yet
--   confirmed     receives the list's campaigns
--   unsubscribed  left this list; never resubscribed by an import
-- `source` says what made the last change: cli, import, web, bounce.
CREATE TABLE IF NOT EXISTS subscriptions (
    subscriber_id INTEGER NOT NULL REFERENCES subscribers(id) ON DELETE CASCADE,
    list_id       INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    status        TEXT    NOT NULL CHECK (status IN ('pending', 'confirmed', 'unsubscribed')),
    source        TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (subscriber_id, list_id)
) WITHOUT ROWID;
-- Counts per list and state, and the audience of a list.
CREATE INDEX IF NOT EXISTS subscriptions_list_status ON subscriptions (list_id, status);

-- Campaigns handed to the dispatcher. `compiled` is the frozen compiled
-- content (JSON), so a campaign file edited after scheduling changes nothing.
CREATE TABLE IF NOT EXISTS campaigns (
    id          INTEGER PRIMARY KEY,
    slug        TEXT    NOT NULL UNIQUE,
    list_id     INTEGER NOT NULL REFERENCES lists(id),
    subject     TEXT    NOT NULL,
    compiled    TEXT    NOT NULL,
    source_hash TEXT    NOT NULL,
    status      TEXT    NOT NULL
                CHECK (status IN ('scheduled', 'sending', 'sent', 'held', 'cancelled')),
    send_at     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    started_at  INTEGER,
    finished_at INTEGER,
    -- The dispatcher run that holds the campaign, until lease_until.
    lease_owner TEXT,
    lease_until INTEGER
);

-- The send log: one row per campaign and subscriber, so a person is mailed at
-- most once per campaign whatever crashes and restarts happen.
--   queued    waiting; sending: committed before the SMTP transaction;
--   sent / deferred (retry at next_attempt_at) / failed: committed after it;
--   unknown   was `sending` when a run died; not sent again by default;
--   skipped   left the list (or was suppressed) before their turn came.
CREATE TABLE IF NOT EXISTS deliveries (
    id              INTEGER PRIMARY KEY,
    campaign_id     INTEGER NOT NULL REFERENCES campaigns(id),
    subscriber_id   INTEGER NOT NULL REFERENCES subscribers(id),
    status          TEXT    NOT NULL
                    CHECK (status IN ('queued', 'sending', 'sent', 'deferred', 'failed', 'unknown', 'skipped')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    -- Last SMTP reply; scrubbed on erasure (replies may quote the address).
    last_reply      TEXT,
    message_id      TEXT,
    updated_at      INTEGER NOT NULL,
    sent_at         INTEGER,
    UNIQUE (campaign_id, subscriber_id)
);
CREATE INDEX IF NOT EXISTS deliveries_work ON deliveries (campaign_id, status, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_subscriber ON deliveries (subscriber_id);

-- History, append-only: imported, subscribed, confirmed, unsubscribed,
-- bounced, complained, erased, updated (detail: what) (the dispatcher may add its own kinds).
-- `source`: cli, import, web, bounce, dispatch. `detail`: raw reason etc.
-- The triggers below refuse DELETE, and refuse UPDATE except the two that
-- erasure needs: clearing `detail` and detaching the subscriber.
CREATE TABLE IF NOT EXISTS events (
    id            INTEGER PRIMARY KEY,
    subscriber_id INTEGER REFERENCES subscribers(id) ON DELETE SET NULL,
    list_id       INTEGER REFERENCES lists(id),
    campaign_id   INTEGER REFERENCES campaigns(id),
    kind          TEXT    NOT NULL,
    source        TEXT    NOT NULL,
    detail        TEXT,
    created_at    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_subscriber ON events (subscriber_id, created_at);

CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;

CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
WHEN NOT (
        NEW.id = OLD.id
    AND NEW.list_id IS OLD.list_id
    AND NEW.campaign_id IS OLD.campaign_id
    AND NEW.kind = OLD.kind
    AND NEW.source = OLD.source
    AND NEW.created_at = OLD.created_at
    AND (NEW.detail IS OLD.detail OR NEW.detail IS NULL)
    AND (NEW.subscriber_id IS OLD.subscriber_id OR NEW.subscriber_id IS NULL)
)
BEGIN
    SELECT RAISE(ABORT, 'events are append-only (only erasure may scrub them)');
END;

-- Addresses that must never be mailed, as sha256 hex of the canonical
-- address (`address::hash`). Survive erasure: that is their purpose.
-- reason: erased, bounced, complained, manual.
CREATE TABLE IF NOT EXISTS suppressions (
    hash       TEXT    PRIMARY KEY,
    reason     TEXT    NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Small key/value settings (e.g. a generated development secret).
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- step 2: returned mail already processed

-- One row per bounce, complaint, auto-reply or mailto unsubscribe that
-- `bulletin bounces ingest/scan` has processed, keyed by the sha256 of the
-- raw message: ingesting the same message twice changes nothing.
CREATE TABLE IF NOT EXISTS inbound (
    hash          TEXT    PRIMARY KEY,
    kind          TEXT    NOT NULL,
    subscriber_id INTEGER REFERENCES subscribers(id) ON DELETE SET NULL,
    created_at    INTEGER NOT NULL
) WITHOUT ROWID;
-- Soft-bounce counting looks up a person's recent bounce events.
CREATE INDEX IF NOT EXISTS events_kind_time ON events (kind, created_at);

-- step 3: how each campaign run delivered: over SMTP or into the outbox

-- One row per `send` or `dispatch` run of a campaign. `transport` is `smtp`
-- (target: host:port) or `outbox` (target: the folder the .eml files went
-- to), so `bulletin status` can say "written to the outbox" instead of
-- "sent" for messages that never left the machine.
CREATE TABLE IF NOT EXISTS campaign_runs (
    id          INTEGER PRIMARY KEY,
    campaign_id INTEGER NOT NULL REFERENCES campaigns(id),
    transport   TEXT    NOT NULL CHECK (transport IN ('smtp', 'outbox')),
    target      TEXT    NOT NULL,
    started_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS campaign_runs_campaign ON campaign_runs (campaign_id);

-- step 4: returned mail kept for review

-- Bounces, complaints and mailto unsubscribes that carried no valid signed
-- token (VERP address, unsubscribe address or quoted Message-ID) and so
-- changed nobody: kept for `bulletin bounces list --unmatched`. `reason`
-- says why the message was not matched. One row per message (the same hash
-- as `inbound`).
CREATE TABLE IF NOT EXISTS unmatched (
    id          INTEGER PRIMARY KEY,
    hash        TEXT    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL,
    sender      TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS unmatched_time ON unmatched (received_at);

-- step 5: consent records per subscription

-- When and from where a person gave consent to a list: one row per
-- subscription that has a record, deleted with it (erasure deletes the
-- subscriptions, so these go too).
-- consent_at/consent_ip: the opt-in (the sign-up, or the source tool's
-- OPTIN_TIME/OPTIN_IP or created_at); confirmed_at/confirmed_ip: the double
-- opt-in click. source: who recorded it (web, or the tool an import came
-- from: mailchimp, listmonk, ...). NULL when not known.
CREATE TABLE IF NOT EXISTS consents (
    subscriber_id INTEGER NOT NULL,
    list_id       INTEGER NOT NULL,
    consent_at    INTEGER,
    consent_ip    TEXT,
    confirmed_at  INTEGER,
    confirmed_ip  TEXT,
    source        TEXT,
    PRIMARY KEY (subscriber_id, list_id),
    FOREIGN KEY (subscriber_id, list_id)
        REFERENCES subscriptions (subscriber_id, list_id) ON DELETE CASCADE
) WITHOUT ROWID;

-- step 6: lists can be removed without losing their history

-- `lists remove` records the list here instead of deleting its row:
-- campaigns and events keep pointing at it, so nobody's history changes. A
-- removed list is found by no slug (its slug gets a `~removed-ID` suffix,
-- which a slug can never contain, so the name is free again), shown nowhere
-- and mailed never. (A table rather than a column: steps stay idempotent.)
CREATE TABLE IF NOT EXISTS removed_lists (
    list_id    INTEGER PRIMARY KEY REFERENCES lists(id),
    removed_at INTEGER NOT NULL
);

-- step 7: soft-bounce scores

-- One row per person with a soft-bounce score (`store::bounces`): the score
-- as it was at `computed_at` (unix seconds). It halves every `half_life`
-- seconds after that (`soft_window_days` when it was last raised, kept here
-- so the dispatcher can lower it without the bounce settings), computed
-- when it is read or changed (`bounce::score`), so nothing rewrites it as
-- time passes. Each soft bounce from a campaign not yet counted adds 1; a
-- successful delivery halves it; `subscribers reactivate` deletes the row.
-- Every change is also an event (`soft_bounce`, `bounce_score_lowered`)
-- whose detail starts with the new score, for `subscribers show`.
CREATE TABLE IF NOT EXISTS bounce_scores (
    subscriber_id INTEGER PRIMARY KEY REFERENCES subscribers(id) ON DELETE CASCADE,
    score         REAL    NOT NULL,
    computed_at   INTEGER NOT NULL,
    half_life     INTEGER NOT NULL CHECK (half_life > 0)
);

-- step 8: welcome campaigns

-- A campaign with `trigger = "welcome"` in its front matter: not sent to
-- the list when frozen, but once to each person whose subscription to the
-- list becomes confirmed while it is active (`sending`); `cancel` ends it.
-- One row per triggered campaign; ordinary campaigns have none. (A table
-- rather than a column: steps stay idempotent.) At most one active welcome
-- campaign per list: `Store::freeze_welcome` checks it in the transaction
-- that freezes one.
CREATE TABLE IF NOT EXISTS campaign_triggers (
    campaign_id INTEGER PRIMARY KEY REFERENCES campaigns(id),
    trigger     TEXT    NOT NULL CHECK (trigger IN ('welcome'))
);

-- step 9: campaigns to several lists

-- The lists a campaign goes to, in front matter order (`position` 0 is
-- `campaigns.list_id`, which stays the first list). Filled for every
-- campaign; campaigns frozen before this step get their one list here.
CREATE TABLE IF NOT EXISTS campaign_lists (
    campaign_id INTEGER NOT NULL REFERENCES campaigns(id),
    list_id     INTEGER NOT NULL REFERENCES lists(id),
    position    INTEGER NOT NULL,
    PRIMARY KEY (campaign_id, list_id)
) WITHOUT ROWID;
-- The claim looks for a person's earliest other list in this order.
CREATE UNIQUE INDEX IF NOT EXISTS campaign_lists_position ON campaign_lists (campaign_id, position);
-- `lists remove` asks which campaigns still go to a list.
CREATE INDEX IF NOT EXISTS campaign_lists_list ON campaign_lists (list_id);
INSERT OR IGNORE INTO campaign_lists (campaign_id, list_id, position)
    SELECT id, list_id, 0 FROM campaigns;

-- The list through which this person receives this campaign: the earliest
-- of the campaign's lists they were mailable on when queued, or the one the
-- claim switched to when they had left that one. Names the List-Id and the
-- unsubscribe link. NULL in rows queued before this step: the campaign's
-- first list.
ALTER TABLE deliveries ADD COLUMN list_id INTEGER REFERENCES lists(id);

-- step 10: consent records without a foreign key

-- The same table without its foreign key to `subscriptions`: checking it
-- cost every imported row a lookup in `subscriptions` (issue 12's import
-- benchmark). Nothing deletes a subscription but erasure
-- (`Store::forget`), which deletes the person's consent records itself in
-- the same transaction. (SQLite drops a foreign key only by rebuilding the
-- table: create, copy, drop, rename.)
CREATE TABLE IF NOT EXISTS consents_rebuilt (
    subscriber_id INTEGER NOT NULL,
    list_id       INTEGER NOT NULL,
    consent_at    INTEGER,
    consent_ip    TEXT,
    confirmed_at  INTEGER,
    confirmed_ip  TEXT,
    source        TEXT,
    PRIMARY KEY (subscriber_id, list_id)
) WITHOUT ROWID;
INSERT OR IGNORE INTO consents_rebuilt
    SELECT subscriber_id, list_id, consent_at, consent_ip, confirmed_at, confirmed_ip, source
    FROM consents;
DROP TABLE consents;
ALTER TABLE consents_rebuilt RENAME TO consents;

-- step 11: a sent campaign stops going to newcomers

-- When `bulletin cancel` ended a sent campaign's `resend_to_new` window
-- (front matter `resend_until`, frozen in `compiled`): from then on nobody
-- who joins gets it. NULL while the window runs as frozen.
ALTER TABLE campaigns ADD COLUMN resend_closed_at INTEGER;

-- step 12: the sign-up rate limit, shared by every `serve` process

-- Sign-up requests per client address (an IPv6 client is its /64) in the
-- window that started with the client's first request (`window_start`,
-- unix seconds). Every `bulletin serve` on the database counts here, so a
-- client spreading requests over several servers is limited as one. Rows
-- whose window ended are deleted as new requests come in.
CREATE TABLE IF NOT EXISTS signup_limits (
    client       TEXT    PRIMARY KEY,
    window_start INTEGER NOT NULL,
    hits         INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS signup_limits_window ON signup_limits (window_start);
-- step 13: dispatch workers sharing a campaign

-- Every running `dispatch`/`send` process (a worker: `host:pid:random`)
-- and when it last said it was alive. On PostgreSQL several workers share
-- one campaign; SQLite keeps one run per campaign (the lease) but records
-- its worker too, for `status`. A worker whose heartbeat is older than the
-- lease is dead: its `sending` rows are settled by the in-flight policy.
CREATE TABLE IF NOT EXISTS workers (
    id           TEXT    PRIMARY KEY,
    host         TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    campaign_id  INTEGER,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
-- Which worker marked a row `sending` (NULL before this step, and once the
-- row is settled).
ALTER TABLE deliveries ADD COLUMN worker_id TEXT;
-- The shared pace of a campaign with `[smtp] rate`: the earliest time
-- (microseconds) the next message may start, across all workers.
CREATE TABLE IF NOT EXISTS campaign_pace (
    campaign_id INTEGER PRIMARY KEY,
    next_at     INTEGER NOT NULL
);
