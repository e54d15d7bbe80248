//! The `/_sandbox` control routes other processes use.

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn accounts_log_and_counters_are_reachable_over_http() {
    let sb = start().await;
    let base = sb.base_url();
    let created = json_of(
        http()
            .post(format!("{base}/_sandbox/accounts"))
            .json(&json!({"host": "NewShop.amocrm.ru"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(created["host"], "newshop.amocrm.ru");
    let again = json_of(
        http()
            .post(format!("{base}/_sandbox/accounts"))
            .json(&json!({"host": "newshop.amocrm.ru"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        again["id"], created["id"],
        "adding an existing account returns it"
    );
    let accounts = json_of(
        http()
            .get(format!("{base}/_sandbox/accounts"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(accounts.as_array().unwrap().len(), 4);

    let pair = connect(&sb, "newshop.amocrm.ru").await;
    let resp = api(
        &sb,
        "newshop.amocrm.ru",
        reqwest::Method::GET,
        "account",
        &pair.access_token,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let counters = json_of(
        http()
            .get(format!(
                "{base}/_sandbox/accounts/newshop.amocrm.ru/counters"
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(counters["code_exchanges"], 1);
    assert_eq!(counters["requests"], 2);
    let log = json_of(
        http()
            .get(format!("{base}/_sandbox/log?host=newshop.amocrm.ru"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["path"], "/oauth2/access_token");
    assert_eq!(log[0]["grant_type"], "authorization_code");
    assert_eq!(log[1]["path"], "/api/v4/account");
    assert_eq!(log[1]["status"], 200);
    let since = log[0]["seq"].as_u64().unwrap();
    let newer = json_of(
        http()
            .get(format!("{base}/_sandbox/log?since={since}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(newer.as_array().unwrap().len(), 1);
    let pipelines = json_of(
        http()
            .get(format!(
                "{base}/_sandbox/accounts/newshop.amocrm.ru/pipelines"
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(pipelines[0]["statuses"].as_array().unwrap().len(), 6);
    let idle = json_of(
        http()
            .get(format!("{base}/_sandbox/deliveries/idle?timeout_ms=100"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(idle["idle"], true);
    assert_eq!(
        http()
            .get(format!("{base}/_sandbox/accounts/nobody.example/leads"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let home = http().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(home.status(), 200);
    assert!(home.text().await.unwrap().contains("newshop.amocrm.ru"));
    sb.stop().await;
}

#[tokio::test]
async fn integrations_can_be_added_at_run_time_without_exposing_secrets() {
    let sb = start_with(|c| c.integrations.clear()).await;
    let base = sb.base_url();
    let added = http()
        .post(format!("{base}/_sandbox/integrations"))
        .json(&json!({"client_id": CLIENT_ID, "client_secret": SECRET, "redirect_uri": REDIRECT}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 204);
    let listed = http()
        .get(format!("{base}/_sandbox/integrations"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listed.contains(CLIENT_ID) && !listed.contains(SECRET));
    connect(&sb, HOST).await;
    sb.stop().await;
}
