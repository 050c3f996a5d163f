"""The database schema, as the ordered list of migrations that build it.

A migration is never edited once released: a change is a new one appended here. The CHECK constraints
take their values from the vocabulary; a new value for one of them needs a migration that rebuilds
the table (SQLite cannot alter a CHECK).
"""

from __future__ import annotations

from cds_daemon.common.vocabulary import (
    InstanceState,
    OutboxState,
    ReviewDecision,
    UserRole,
    WorklistStatus,
    sql_values,
)

MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE instances (
        id INTEGER PRIMARY KEY,
        sop_instance_uid TEXT NOT NULL UNIQUE,
        sop_class_uid TEXT NOT NULL,
        study_instance_uid TEXT,
        series_instance_uid TEXT,
        accession_number TEXT,
        transfer_syntax_uid TEXT NOT NULL,
        calling_ae TEXT NOT NULL,
        peer_address TEXT NOT NULL,
        spool_path TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        state TEXT NOT NULL
            CHECK (state IN ({sql_values(InstanceState)})),
        state_reason TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        received_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX instances_state ON instances (state, id);
    CREATE TABLE rejections (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        calling_ae TEXT,
        peer_address TEXT,
        sop_class_uid TEXT,
        sop_instance_uid TEXT,
        status INTEGER NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        sop_instance_uid TEXT,
        detail TEXT
    );
    CREATE INDEX audit_uid ON audit (sop_instance_uid);
    """,
    f"""
    CREATE TABLE predictions (
        id INTEGER PRIMARY KEY,
        sop_instance_uid TEXT NOT NULL UNIQUE REFERENCES instances (sop_instance_uid),
        model_name TEXT NOT NULL,
        model_version TEXT NOT NULL,
        model_sha256 TEXT NOT NULL,
        predicted TEXT,
        probabilities TEXT,
        referred INTEGER NOT NULL,
        reasons TEXT NOT NULL,
        detail TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        sop_instance_uid TEXT NOT NULL REFERENCES instances (sop_instance_uid),
        kind TEXT NOT NULL,
        object_uid TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        destination TEXT NOT NULL,
        path TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ({sql_values(OutboxState)})),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT NOT NULL,
        last_error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (object_uid, destination)
    );
    CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
    CREATE INDEX outbox_source ON outbox (sop_instance_uid);
    """,
    f"""
    CREATE TABLE worklist (
        id INTEGER PRIMARY KEY,
        case_key TEXT NOT NULL UNIQUE,
        study_instance_uid TEXT,
        accession_number TEXT,
        priority INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ({sql_values(WorklistStatus)})),
        assignee TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        escalated_at TEXT
    );
    CREATE INDEX worklist_status ON worklist (status, priority, created_at);
    CREATE TABLE worklist_images (
        worklist_id INTEGER NOT NULL REFERENCES worklist (id),
        sop_instance_uid TEXT NOT NULL UNIQUE REFERENCES instances (sop_instance_uid)
    );
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY,
        worklist_id INTEGER NOT NULL REFERENCES worklist (id),
        sop_instance_uid TEXT NOT NULL REFERENCES instances (sop_instance_uid),
        reviewer TEXT NOT NULL,
        decision TEXT NOT NULL CHECK (decision IN ({sql_values(ReviewDecision)})),
        ai_class TEXT,
        final_class TEXT,
        comment TEXT,
        review_sr_uid TEXT,
        decided_at TEXT NOT NULL
    );
    CREATE INDEX decisions_item ON decisions (worklist_id);
    CREATE TABLE users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ({sql_values(UserRole)})),
        full_name TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0
    );
    """,
    """
    ALTER TABLE instances ADD COLUMN purged_at TEXT;
    CREATE INDEX instances_purge ON instances (state, updated_at);
    """,
    """
    ALTER TABLE outbox ADD COLUMN commit_txn TEXT;
    CREATE INDEX outbox_commit ON outbox (commit_txn);
    """,
    """
    ALTER TABLE rejections ADD COLUMN code TEXT;
    """,
    # The worklist case of each image, decided at ingest (review.cases); rows from before take the rule of
    # their time: the accession number, else the study.
    """
    ALTER TABLE instances ADD COLUMN case_key TEXT;
    UPDATE instances SET case_key = CASE WHEN accession_number IS NOT NULL AND accession_number != ''
        THEN 'accession:' || accession_number ELSE 'study:' || COALESCE(study_instance_uid, sop_instance_uid) END;
    """,
    # A finalised image sampled for the blind audit sits in the worklist like any other; only this flag (used
    # by the admin statistics) tells it apart.
    """
    ALTER TABLE worklist_images ADD COLUMN audit INTEGER NOT NULL DEFAULT 0;
    """,
    # A reviewer's command-line token (``cds-daemon user token``): its SHA-256 only, and when it expires.
    """
    CREATE TABLE user_tokens (
        token_sha256 TEXT PRIMARY KEY,
        username TEXT NOT NULL REFERENCES users (username),
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    );
    """,
    # Several nodes on one PostgreSQL database: who holds which work (a lease, renewed while working), the
    # nodes' heartbeats, server-side web sessions, the last run of each once-per-cluster job, and the
    # oldest software version that may run on this schema (additive migrations keep it; see _check_reader).
    """
    ALTER TABLE instances ADD COLUMN claimed_by TEXT;
    ALTER TABLE instances ADD COLUMN lease_until TEXT;
    ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
    ALTER TABLE outbox ADD COLUMN lease_until TEXT;
    CREATE TABLE nodes (
        node_id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        version TEXT NOT NULL,
        started_at TEXT NOT NULL,
        last_seen TEXT NOT NULL
    );
    CREATE TABLE web_sessions (
        sid_sha256 TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    );
    CREATE TABLE cluster_jobs (
        name TEXT PRIMARY KEY,
        last_run_at TEXT NOT NULL,
        node_id TEXT NOT NULL
    );
    CREATE TABLE store_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    INSERT INTO store_meta (key, value) VALUES ('min_reader', '10');
    ALTER TABLE worklist_images ADD COLUMN added_seq INTEGER;
    UPDATE worklist_images SET added_seq = rowid;
    """,
    # The case-level result: when a case (a specimen's images) last changed and is due for its case SR (after
    # the quiet period; NULL once written), and the version of the last one written (a late image makes the
    # next version, with the previous as predecessor). Additive: min_reader stays.
    """
    CREATE TABLE case_reports (
        case_key TEXT PRIMARY KEY,
        due_at TEXT,
        version INTEGER NOT NULL DEFAULT 0,
        sr_uid TEXT,
        images INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX case_reports_due ON case_reports (due_at);
    """,
    # The whole image's pooled backbone features, per model: similar reviewer-confirmed cases (float32 bytes).
    """
    CREATE TABLE embeddings (
        sop_instance_uid TEXT PRIMARY KEY REFERENCES instances (sop_instance_uid),
        model_sha256 TEXT NOT NULL,
        vector BLOB NOT NULL
    );
    CREATE INDEX embeddings_model ON embeddings (model_sha256);
    """,
    # Site calibration (triage modes): how each prediction was triaged (mode, the site rule that finalised it,
    # the finalisation confidence and whether nothing but the threshold referred it); the pool of images reviewed
    # in shadow mode, one row per image and bundle (a changed decision updates it); the certified site rules,
    # at most one active per bundle, each with the pool's class mix and OOD rate (the drift reference while it is
    # in force); and the history of activations and fallbacks. A decision's sequence
    # number is unique per image: two nodes deciding one image at once cannot both write review SR n.
    """
    ALTER TABLE predictions ADD COLUMN triage_mode TEXT;
    ALTER TABLE predictions ADD COLUMN rule_id INTEGER;
    ALTER TABLE predictions ADD COLUMN finalisation_confidence DOUBLE PRECISION;
    ALTER TABLE predictions ADD COLUMN candidate INTEGER;
    CREATE INDEX predictions_rule ON predictions (rule_id);
    ALTER TABLE decisions ADD COLUMN sequence INTEGER;
    UPDATE decisions SET sequence = (SELECT COUNT(*) FROM decisions x
        WHERE x.sop_instance_uid = decisions.sop_instance_uid AND x.id <= decisions.id);
    CREATE UNIQUE INDEX decisions_sequence ON decisions (sop_instance_uid, sequence);
    CREATE TABLE calibration_pool (
        id INTEGER PRIMARY KEY,
        model_sha256 TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL REFERENCES instances (sop_instance_uid),
        decision_id INTEGER NOT NULL,
        confidence DOUBLE PRECISION NOT NULL,
        candidate INTEGER NOT NULL,
        ai_class TEXT NOT NULL,
        final_class TEXT,
        added_at TEXT NOT NULL,
        UNIQUE (model_sha256, sop_instance_uid)
    );
    CREATE TABLE site_rules (
        id INTEGER PRIMARY KEY,
        model_sha256 TEXT NOT NULL,
        alpha DOUBLE PRECISION NOT NULL,
        delta DOUBLE PRECISION NOT NULL,
        threshold DOUBLE PRECISION,
        n_pool INTEGER NOT NULL,
        n_candidates INTEGER NOT NULL,
        n_finalised INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        upper_bound DOUBLE PRECISION NOT NULL,
        method TEXT NOT NULL,
        pool_max_id INTEGER NOT NULL,
        certified_by TEXT NOT NULL,
        certified_at TEXT NOT NULL,
        active INTEGER NOT NULL DEFAULT 0,
        activated_by TEXT,
        activated_at TEXT,
        deactivated_by TEXT,
        deactivated_at TEXT,
        deactivation_reason TEXT,
        reference TEXT
    );
    CREATE UNIQUE INDEX site_rules_active ON site_rules (model_sha256) WHERE active = 1;
    CREATE TABLE triage_events (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        model_sha256 TEXT NOT NULL,
        rule_id INTEGER,
        event TEXT NOT NULL,
        actor TEXT NOT NULL,
        reason TEXT
    );
    """,
    # How each node runs the model (runtime, threads chosen at start, usable cores): ``status`` shows it.
    """
    ALTER TABLE nodes ADD COLUMN runtime TEXT;
    """,
    # Whole slides (VL Whole Slide Microscopy): each level is an instance with its slide's key (series and
    # Frame of Reference); the slide waits until no level has arrived for ``slides.quiet_s`` (due_at), then
    # one of its received levels, the representative, is analysed for the whole slide and carries its result;
    # the other levels are reported and delivered with it. Additive: min_reader stays.
    """
    ALTER TABLE instances ADD COLUMN slide_key TEXT;
    CREATE INDEX instances_slide ON instances (slide_key);
    CREATE TABLE slides (
        slide_key TEXT PRIMARY KEY,
        due_at TEXT,
        representative TEXT,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX slides_due ON slides (due_at);
    CREATE INDEX slides_representative ON slides (representative);
    """,
    # Reviewing slides: each analysed field of a slide (numbered as in its SR, from 1) with its pooled backbone
    # features (similar cases: a slide is found by its top fields) and its Grad-CAM (uint8, rows x columns:
    # the review page draws the heatmap without the model); a slide decision records the fields the reviewer
    # opened and the one they marked as diagnostic. Additive: min_reader stays.
    """
    CREATE TABLE slide_fields (
        sop_instance_uid TEXT NOT NULL REFERENCES instances (sop_instance_uid),
        field_number INTEGER NOT NULL,
        model_sha256 TEXT NOT NULL,
        vector BLOB,
        cam BLOB,
        cam_rows INTEGER NOT NULL DEFAULT 0,
        cam_columns INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (sop_instance_uid, field_number)
    );
    ALTER TABLE decisions ADD COLUMN fields_viewed TEXT;
    ALTER TABLE decisions ADD COLUMN diagnostic_field INTEGER;
    """,
    # Orders from the laboratory information system (HL7 OML^O21): the LIS's placer and filler order numbers
    # with the accession, specimen and container they are for, so that results carry the LIS's numbers.
    # Additive: min_reader stays.
    """
    CREATE TABLE orders (
        id INTEGER PRIMARY KEY,
        placer_order TEXT NOT NULL DEFAULT '',
        filler_order TEXT NOT NULL DEFAULT '',
        accession_number TEXT,
        specimen_id TEXT,
        container_id TEXT,
        ordering_provider TEXT,
        control_id TEXT NOT NULL,
        received_at TEXT NOT NULL,
        UNIQUE (placer_order, filler_order)
    );
    CREATE INDEX orders_accession ON orders (accession_number);
    CREATE INDEX orders_specimen ON orders (specimen_id);
    CREATE INDEX orders_container ON orders (container_id);
    """,
)
