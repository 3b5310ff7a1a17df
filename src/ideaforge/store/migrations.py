"""The campaign database's schema, as numbered migrations (applied by `Store` on open)."""

# Numbered migrations: index i brings the schema from version i to i+1. Never edit a
# shipped entry; append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE env_files (
        path TEXT PRIMARY KEY, cls TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL
    );
    CREATE TABLE ideas (
        id INTEGER PRIMARY KEY,
        epoch INTEGER NOT NULL,
        kind TEXT NOT NULL,              -- initial | exploit | explore | best_of_n | manual
        title TEXT NOT NULL,
        description TEXT NOT NULL,
        code_changes TEXT NOT NULL DEFAULT '',
        parents TEXT NOT NULL DEFAULT '[]',  -- JSON list of idea ids
        origin TEXT NOT NULL DEFAULT '{}',   -- JSON: model, prompt kind, ideator
        status TEXT NOT NULL DEFAULT 'new',  -- new | implementing | implemented | implement_failed
        created REAL NOT NULL
    );
    CREATE TABLE implementations (
        id INTEGER PRIMARY KEY,
        idea_id INTEGER REFERENCES ideas(id),
        status TEXT NOT NULL,            -- ok | implement_failed
        diff TEXT NOT NULL DEFAULT '',
        files TEXT NOT NULL DEFAULT '{}',    -- JSON {path: new content | null for deleted}
        attempts TEXT NOT NULL DEFAULT '[]', -- JSON list of attempt records
        error TEXT,
        created REAL NOT NULL
    );
    CREATE TABLE trials (
        id INTEGER PRIMARY KEY,
        implementation_id INTEGER REFERENCES implementations(id),  -- NULL: the baseline
        role TEXT NOT NULL,              -- baseline | candidate | confirm | check
        seed INTEGER NOT NULL,
        budget_s REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'queued',  -- queued | running | done
        outcome TEXT,                    -- evaluated | failed | timeout | oom | diverged | no_result | invalid
        metric REAL,
        metrics TEXT NOT NULL DEFAULT '{}',
        curve TEXT NOT NULL DEFAULT '[]',
        reason TEXT,
        exit_code INTEGER,
        train_s REAL,
        eval_s REAL,
        pid INTEGER,
        attempt INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        started REAL,
        ended REAL
    );
    CREATE INDEX trials_status ON trials(status);
    CREATE TABLE llm_calls (
        id INTEGER PRIMARY KEY,
        model TEXT NOT NULL,
        purpose TEXT NOT NULL,
        system TEXT,
        messages TEXT NOT NULL,
        reply TEXT,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL NOT NULL DEFAULT 0,
        latency_s REAL NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 1,
        error TEXT,
        started_at REAL NOT NULL
    );
    """,
    # 2: re-queues because the trial's worker died (capped; shown in status and the report),
    # apart from `attempt`, which also counts re-queues of trials stopped by the controller.
    """
    ALTER TABLE trials ADD COLUMN requeues INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: each epoch's ideation call, recorded with its ideas so a resume never asks again
    # (ideations made before this table are taken from the ideas they left).
    """
    CREATE TABLE ideations (
        epoch INTEGER NOT NULL,
        kind TEXT NOT NULL,              -- initial | exploit | explore | best_of_n
        asked INTEGER,                   -- ideas requested (NULL when recorded before this table)
        returned INTEGER NOT NULL,       -- ideas the ideator gave back (may be fewer than asked)
        kept INTEGER NOT NULL,           -- ideas stored after de-duplication
        ideator TEXT,
        created REAL NOT NULL,
        PRIMARY KEY (epoch, kind)
    );
    INSERT INTO ideations(epoch, kind, asked, returned, kept, ideator, created)
        SELECT epoch, kind, NULL, COUNT(*), COUNT(*), NULL, MIN(created) FROM ideas
        WHERE kind IN ('initial', 'exploit', 'explore', 'best_of_n') GROUP BY epoch, kind;
    -- one idea's implementations and one implementation's trials, without a scan (reports, confirm)
    CREATE INDEX implementations_idea ON implementations(idea_id);
    CREATE INDEX trials_implementation ON trials(implementation_id);
    """,
    # 4: RL from execution reward (ideaforge.rl). One row per step and per rollout;
    # a step's status is the stage it is in, so a killed run resumes there.
    """
    CREATE TABLE rl_steps (
        step INTEGER PRIMARY KEY,
        status TEXT NOT NULL,            -- generating | executing | updating | done
        prompt TEXT NOT NULL,
        stats TEXT NOT NULL DEFAULT '{}',    -- JSON: update loss, timings
        adapter TEXT,                    -- directory of the LoRA adapter after this step's update
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE rl_rollouts (
        id INTEGER PRIMARY KEY,
        step INTEGER NOT NULL REFERENCES rl_steps(step),
        idx INTEGER NOT NULL,            -- 0..G-1 within the step
        llm_call_id INTEGER REFERENCES llm_calls(id),
        text TEXT NOT NULL,
        token_ids TEXT NOT NULL DEFAULT '[]',  -- JSON: completion token ids, what the update scores
        n_tokens INTEGER NOT NULL DEFAULT 0,
        thinking_tokens INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL DEFAULT 'generated',  -- generated | no_idea | implement_failed | queued | scored
        idea_id INTEGER REFERENCES ideas(id),
        implementation_id INTEGER REFERENCES implementations(id),
        trial_id INTEGER REFERENCES trials(id),
        reward REAL,                     -- from the trial alone (metric, 1/loss or improvement, or the failure value)
        shaped REAL,                     -- reward plus length / diversity / novelty terms
        advantage REAL,
        UNIQUE (step, idx)
    );
    """,
    # 5: how each trial was isolated ("bubblewrap" | "none") and its harness-measured CPU seconds
    """
    ALTER TABLE trials ADD COLUMN isolation TEXT;
    ALTER TABLE trials ADD COLUMN train_cpu_s REAL;
    """,
    # 6: the ideation batches of `--mode evolve-async` (search/async_loop.py): asked a few at a time as
    # slots free, each recorded with its ideas so a resume never asks for it again. An async batch's
    # ideas carry its generation in `ideas.epoch` (ideas asked before it // ideas per epoch), so
    # per-epoch views and the contemporaneous baseline read an async campaign as they read a sync one.
    """
    CREATE TABLE batches (
        batch INTEGER NOT NULL,          -- 0, 1, ... in the order asked
        kind TEXT NOT NULL,              -- initial | exploit | explore
        generation INTEGER NOT NULL,     -- the epoch its ideas carry
        finished INTEGER NOT NULL,       -- candidate trials finished when it was asked: the feedback it saw
        exploit_share REAL NOT NULL,     -- the annealed exploit share at that point
        asked INTEGER NOT NULL,          -- ideas requested (counts against epochs x ideas)
        returned INTEGER NOT NULL,       -- ideas the ideator gave back
        kept INTEGER NOT NULL,           -- ideas stored after de-duplication
        ideator TEXT,
        created REAL NOT NULL,
        PRIMARY KEY (batch, kind)
    );
    """,
]
