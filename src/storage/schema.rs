//! The diesel schema, written by hand once for both backends (only types both support).

diesel::table! {
    api_keys (id) {
        id -> BigInt,
        name -> Text,
        key_prefix -> Text,
        key_hash -> Text,
        tier -> Text,
        created_at -> Timestamp,
        last_used_at -> Nullable<Timestamp>,
        revoked_at -> Nullable<Timestamp>,
        scope -> Text,
    }
}

diesel::table! {
    api_key_usage (key_id, window_start) {
        key_id -> BigInt,
        window_start -> Timestamp,
        request_count -> BigInt,
    }
}

diesel::table! {
    amocrm_connections (id) {
        id -> BigInt,
        seller_id -> Text,
        account_id -> BigInt,
        host -> Text,
        subdomain -> Text,
        api_domain -> Nullable<Text>,
        status -> Text,
        access_token_enc -> Nullable<Binary>,
        refresh_token_enc -> Nullable<Binary>,
        token_expires_at -> Nullable<Timestamp>,
        token_version -> BigInt,
        last_refreshed_at -> Nullable<Timestamp>,
        refresh_failures -> Integer,
        last_error -> Nullable<Text>,
        next_refresh_at -> Nullable<Timestamp>,
        refresh_lease_owner -> Nullable<Text>,
        refresh_lease_until -> Nullable<Timestamp>,
        webhook_token -> Text,
        pipeline_id -> Nullable<BigInt>,
        stage_pending -> Nullable<BigInt>,
        stage_awaiting_payment -> Nullable<BigInt>,
        stage_paid -> Nullable<BigInt>,
        stage_shipping -> Nullable<BigInt>,
        stage_completed -> Nullable<BigInt>,
        stage_cancelled -> Nullable<BigInt>,
        field_order_number_id -> Nullable<BigInt>,
        field_order_link_id -> Nullable<BigInt>,
        amocrm_webhook_id -> Nullable<BigInt>,
        webhook_destination -> Nullable<Text>,
        provisioning_state -> Text,
        provisioning_error -> Nullable<Text>,
        provisioning_attempts -> Integer,
        next_provision_at -> Nullable<Timestamp>,
        push_lease_owner -> Nullable<Text>,
        push_lease_until -> Nullable<Timestamp>,
        connected_at -> Timestamp,
        revoked_at -> Nullable<Timestamp>,
        revoke_reason -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        platform -> Text,
        suspended_reason -> Nullable<Text>,
        suspended_at -> Nullable<Timestamp>,
        next_probe_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    connect_sessions (id) {
        id -> BigInt,
        token_hash -> Text,
        seller_id -> Text,
        return_url -> Nullable<Text>,
        lang -> Text,
        expires_at -> Timestamp,
        used_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
        platform -> Text,
    }
}

diesel::table! {
    connection_health (connection_id) {
        connection_id -> BigInt,
        state -> Text,
        last_success_at -> Nullable<Timestamp>,
        last_failure_at -> Nullable<Timestamp>,
        last_failure_class -> Nullable<Text>,
        last_failure -> Nullable<Text>,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    oauth_states (id) {
        id -> BigInt,
        state_hash -> Text,
        session_id -> BigInt,
        seller_id -> Text,
        browser_hash -> Text,
        mode -> Text,
        expires_at -> Timestamp,
        used_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
        lang -> Nullable<Text>,
        result_hash -> Nullable<Text>,
        outcome -> Nullable<Text>,
    }
}

diesel::table! {
    orders (id) {
        id -> Text,
        seller_id -> Text,
        order_number -> Text,
        status -> Text,
        total_amount_minor -> BigInt,
        currency -> Text,
        body_json -> Text,
        body_hash -> Text,
        sync_state -> Text,
        lead_id -> Nullable<BigInt>,
        contact_id -> Nullable<BigInt>,
        company_id -> Nullable<BigInt>,
        sync_attempts -> Integer,
        last_error -> Nullable<Text>,
        synced_at -> Nullable<Timestamp>,
        next_attempt_at -> Timestamp,
        needs_lookup -> Bool,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<Timestamp>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        buyer_resolved -> Bool,
        buyer_contact_id -> Nullable<BigInt>,
        buyer_company_id -> Nullable<BigInt>,
        contact_matched -> Nullable<Text>,
        responsible_user_id -> Nullable<BigInt>,
    }
}

diesel::table! {
    order_moves (id) {
        id -> BigInt,
        order_id -> Text,
        target_status -> Text,
        state -> Text,
        attempts -> Integer,
        last_error -> Nullable<Text>,
        next_attempt_at -> Timestamp,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<Timestamp>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    events (seq) {
        seq -> BigInt,
        id -> Text,
        event -> Text,
        seller_id -> Text,
        payload -> Text,
        dedupe_key -> Nullable<Text>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    webhook_subscriptions (id) {
        id -> Text,
        url -> Text,
        events -> Text,
        secret_enc -> Binary,
        active -> Bool,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    event_deliveries (id) {
        id -> BigInt,
        event_seq -> BigInt,
        subscription_id -> Text,
        seller_id -> Text,
        state -> Text,
        attempts -> Integer,
        next_attempt_at -> Timestamp,
        last_status -> Nullable<Integer>,
        last_error -> Nullable<Text>,
        delivered_at -> Nullable<Timestamp>,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<Timestamp>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    delivery_attempts (id) {
        id -> BigInt,
        delivery_id -> BigInt,
        attempt -> Integer,
        status_code -> Nullable<Integer>,
        error -> Nullable<Text>,
        duration_ms -> BigInt,
        attempted_at -> Timestamp,
    }
}

diesel::table! {
    amocrm_webhook_inbox (id) {
        id -> BigInt,
        connection_id -> BigInt,
        seller_id -> Text,
        body -> Binary,
        state -> Text,
        attempts -> Integer,
        last_error -> Nullable<Text>,
        next_attempt_at -> Timestamp,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<Timestamp>,
        received_at -> Timestamp,
        processed_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    lead_states (seller_id, lead_id) {
        seller_id -> Text,
        lead_id -> BigInt,
        order_id -> Nullable<Text>,
        pipeline_id -> Nullable<BigInt>,
        status_id -> Nullable<BigInt>,
        last_modified -> BigInt,
        paid -> Bool,
        created_by_us -> Bool,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    job_leases (name) {
        name -> Text,
        owner -> Nullable<Text>,
        lease_until -> Nullable<Timestamp>,
        last_started_at -> Nullable<Timestamp>,
        last_finished_at -> Nullable<Timestamp>,
        last_result -> Nullable<Text>,
    }
}

diesel::table! {
    operators (id) {
        id -> BigInt,
        email -> Text,
        name -> Text,
        role -> Text,
        password_hash -> Text,
        failed_logins -> Integer,
        locked_until -> Nullable<Timestamp>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    operator_tokens (id) {
        id -> BigInt,
        operator_id -> BigInt,
        kind -> Text,
        token_hash -> Text,
        expires_at -> Timestamp,
        revoked_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
        family -> Nullable<Text>,
    }
}

diesel::joinable!(api_key_usage -> api_keys (key_id));
diesel::joinable!(oauth_states -> connect_sessions (session_id));
diesel::table! {
    seller_settings (seller_id) {
        seller_id -> Text,
        settings -> Text,
        round_robin_next -> BigInt,
        products_catalog_id -> Nullable<BigInt>,
        catalog_checked_at -> Nullable<Timestamp>,
        problems -> Nullable<Text>,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    buyer_index (seller_id, buyer_key) {
        seller_id -> Text,
        buyer_key -> Text,
        contact_id -> Nullable<BigInt>,
        responsible_user_id -> Nullable<BigInt>,
        creator_order -> Nullable<Text>,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    buyer_scans (seller_id) {
        seller_id -> Text,
        next_page -> Integer,
        finished_at -> Nullable<Timestamp>,
        next_attempt_at -> Timestamp,
        attempts -> Integer,
        last_error -> Nullable<Text>,
    }
}

diesel::table! {
    catalog_skus (seller_id, catalog_id, sku) {
        seller_id -> Text,
        catalog_id -> BigInt,
        sku -> Text,
        element_id -> Nullable<BigInt>,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    order_steps (order_id, step) {
        order_id -> Text,
        step -> Text,
        seller_id -> Text,
        lead_id -> BigInt,
        state -> Text,
        result_id -> Nullable<BigInt>,
        result_count -> Nullable<Integer>,
        attempts -> Integer,
        last_error -> Nullable<Text>,
        next_attempt_at -> Timestamp,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<Timestamp>,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    settings_sessions (id) {
        id -> BigInt,
        token_hash -> Text,
        seller_id -> Text,
        return_url -> Nullable<Text>,
        lang -> Text,
        browser_hash -> Nullable<Text>,
        expires_at -> Timestamp,
        opened_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
    }
}

diesel::joinable!(order_moves -> orders (order_id));
diesel::joinable!(order_steps -> orders (order_id));
diesel::joinable!(event_deliveries -> events (event_seq));
diesel::joinable!(event_deliveries -> webhook_subscriptions (subscription_id));
diesel::joinable!(delivery_attempts -> event_deliveries (delivery_id));
diesel::joinable!(operator_tokens -> operators (operator_id));
diesel::joinable!(connection_health -> amocrm_connections (connection_id));

diesel::allow_tables_to_appear_in_same_query!(
    api_keys,
    buyer_index,
    buyer_scans,
    catalog_skus,
    order_steps,
    seller_settings,
    settings_sessions,
    api_key_usage,
    amocrm_connections,
    connection_health,
    connect_sessions,
    oauth_states,
    orders,
    order_moves,
    events,
    webhook_subscriptions,
    event_deliveries,
    delivery_attempts,
    amocrm_webhook_inbox,
    lead_states,
    job_leases,
    operators,
    operator_tokens,
);

// --- operations ---

diesel::table! {
    login_throttle (throttle_key) {
        throttle_key -> Text,
        failures -> Integer,
        locked_until -> Nullable<Timestamp>,
        updated_at -> Timestamp,
    }
}

// --- cross-instance amoCRM budget ---

diesel::table! {
    amocrm_account_turns (account_key) {
        account_key -> Text,
        owner -> Nullable<Text>,
        lease_until -> Nullable<Timestamp>,
        taken_at -> Nullable<Timestamp>,
        wanted_at -> Nullable<Timestamp>,
    }
}
