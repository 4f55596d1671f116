//! The typed client (`warmpool-client`) against the real binary on the `sim` backend: every
//! endpoint it wraps answers in the type it expects, boots can be followed as typed events, and
//! errors keep the server's status, code and field messages.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use warmpool_client::{Claim, Client, ClientError, EventStream, StatusCode};
use warmpool_types::api::{
    ClaimBody, ClearWarmPoolBody, CreateProjectBody, EnvVarInput, ExecBody, ListInstancesQuery,
    ListProjectsQuery, PutEnvVarsBody, SetupCommand, TestWarmPoolBootBody, UpdateDevboxBody,
    UpdateProjectBody, UpdateResourcesBody, UpdateWarmPoolBody,
};
use warmpool_types::events::{DoneEvent, Event};

/// Reads a stream until its first `done`; answers it, and whether any output had `needle`.
async fn until_done(events: &mut EventStream, needle: &str) -> (DoneEvent, bool) {
    let mut seen = false;
    let read = async {
        while let Some(ev) = events.next().await {
            match ev.expect("a typed event") {
                Event::Output(o) => seen |= o.data.contains(needle),
                Event::Done(d) => return d,
                Event::Step(_) => {}
            }
        }
        panic!("the stream ended before its done event");
    };
    let done = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("a done event within a minute");
    (done, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_answers_in_its_type() {
    let s = TestServer::start(&["--backend", "sim", "--sim-create-ms", "300"]);
    let c = Client::new(&s.url, &s.token, None).unwrap();
    assert_eq!(c.health().await.unwrap().status, "ok");
    assert_eq!(c.ready().await.unwrap().status, "ready");

    // Projects, two pages of them.
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = CreateProjectBody {
            name: format!("client {i}"),
            description: None,
            repos: Vec::new(),
        };
        ids.push(c.create_project(&body).await.unwrap().id);
    }
    let mut query = ListProjectsQuery {
        limit: Some(2),
        cursor: None,
    };
    let first = c.list_projects(&query).await.unwrap();
    assert!(first.has_more);
    query.cursor = first.next_cursor.clone();
    let second = c.list_projects(&query).await.unwrap();
    assert_eq!(first.items.len() + second.items.len(), 3);
    c.delete_project(&ids[2]).await.unwrap();
    let pid = ids[0].clone();
    let p = c
        .update_project(
            &pid,
            &UpdateProjectBody {
                description: Some(Some("typed".into())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(p.description.as_deref(), Some("typed"));
    assert_eq!(c.get_project(&pid).await.unwrap(), p);
    assert!(c.list_repos(&pid).await.unwrap().items.is_empty());

    // Environment variables, devbox, resources.
    let vars = PutEnvVarsBody {
        variables: vec![EnvVarInput {
            name: "GREETING".into(),
            value: "hi".into(),
        }],
    };
    assert_eq!(c.put_env_vars(&pid, &vars).await.unwrap().items.len(), 1);
    assert_eq!(
        c.list_env_vars(&pid).await.unwrap().items[0].name,
        "GREETING"
    );
    assert!(c.delete_env_var(&pid, "GREETING").await.unwrap().deleted);
    let hello = SetupCommand {
        name: "hello".into(),
        command: "echo hello from the setup".into(),
        background: None,
    };
    let devbox = c
        .update_devbox(
            &pid,
            &UpdateDevboxBody {
                setup_commands: Some(vec![hello.clone()]),
                repos: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(devbox.setup_commands, vec![hello]);
    assert_eq!(c.get_devbox(&pid).await.unwrap(), devbox);
    let limits = UpdateResourcesBody {
        cpus: Some(3),
        ..Default::default()
    };
    let r = c.update_resources(&pid, &limits).await.unwrap();
    assert_eq!(r.cpus, 3);
    assert_eq!(c.get_resources(&pid).await.unwrap(), r);

    // A project token acts on its project only, until it is revoked.
    let t = c.create_token(&pid).await.unwrap();
    let scoped = Client::new(&s.url, &t.token, None).unwrap();
    assert_eq!(scoped.get_project(&pid).await.unwrap().id, pid);
    let e = scoped.get_project(&ids[1]).await.unwrap_err();
    assert!(
        matches!(
            e.status(),
            Some(StatusCode::NOT_FOUND | StatusCode::FORBIDDEN)
        ),
        "{e}"
    );
    assert_eq!(c.list_tokens(&pid).await.unwrap().items[0].id, t.id);
    c.delete_token(&pid, &t.id).await.unwrap();
    let e = scoped.get_project(&pid).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::UNAUTHORIZED), "{e}");

    // A test boot, followed live, then used and destroyed.
    let boot = c
        .test_boot(&pid, &TestWarmPoolBootBody::default())
        .await
        .unwrap();
    let mut events = c.instance_events(&pid, &boot.id).await.unwrap();
    let (done, printed) = until_done(&mut events, "hello from the setup").await;
    assert!(done.summary.success, "{done:?}");
    assert!(printed, "the setup's output came as output events");
    let detail = c.get_instance(&pid, &boot.id).await.unwrap();
    assert_eq!((detail.status.as_str(), detail.is_test), ("ready", true));
    let run = ExecBody {
        command: "echo hi".into(),
        ..Default::default()
    };
    assert_eq!(c.exec(&pid, &boot.id, &run).await.unwrap().exit_code, 0);
    assert_eq!(
        c.vm_access(&pid, &boot.id).await.unwrap().instance_id,
        detail.instance_id
    );
    c.delete_instance(&pid, &boot.id).await.unwrap();

    // No VM ready: the claim answers 202 with the instance booting for it, which becomes
    // claimed by itself.
    let no_wait = ClaimBody {
        task_id: Some("task-1".into()),
        wait_seconds: Some(0.0),
        ttl_seconds: None,
    };
    let cold = match c.claim(&pid, &no_wait).await.unwrap() {
        Claim::Pending(r) => r,
        Claim::Ready(r) => panic!("expected a 202, got a VM: {r:?}"),
    };
    assert!(!cold.warm && cold.vm.is_none());
    let mut events = c.instance_events(&pid, &cold.instance.id).await.unwrap();
    until_done(&mut events, "").await;
    assert_eq!(
        c.get_instance(&pid, &cold.instance.id)
            .await
            .unwrap()
            .status,
        "claimed"
    );
    c.vm_access(&pid, &cold.instance.id).await.unwrap();

    // A pool of one: its boot shows on the pool's stream; the next claim is warm (200).
    let mut pool_events = c.pool_events(&pid).await.unwrap();
    let size = UpdateWarmPoolBody {
        target_size: Some(1.0),
        ..Default::default()
    };
    let updated = c.update_warm_pool(&pid, &size).await.unwrap();
    assert_eq!(updated.config.unwrap().target_size, 1);
    let (done, _) = until_done(&mut pool_events, "").await;
    assert!(done.summary.success, "{done:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.get_warm_pool(&pid).await.unwrap().status.ready < 1 {
        assert!(Instant::now() < deadline, "the pool did not fill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let warm = match c.claim(&pid, &ClaimBody::default()).await.unwrap() {
        Claim::Ready(r) => r,
        Claim::Pending(r) => panic!("expected a ready VM, got a 202: {r:?}"),
    };
    assert!(warm.warm && warm.vm.is_some());
    let stats = c.pool_stats(&pid).await.unwrap();
    assert_eq!((stats.warm_claims, stats.cold_claims), (1, 1));
    c.pool_history(&pid).await.unwrap();
    let claimed = c
        .list_instances(
            &pid,
            &ListInstancesQuery {
                limit: Some(10.0),
                status: Some("claimed".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(claimed.items.len(), 2);
    c.delete_instance(&pid, &warm.instance.id).await.unwrap();
    let cleared = c
        .clear_warm_pool(
            &pid,
            &ClearWarmPoolBody {
                replenish: Some(false),
            },
        )
        .await
        .unwrap();
    assert_eq!(cleared.status.ready, 0);
    assert!(c.metrics().await.unwrap().contains("warmpool_claims_total"));
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_keep_the_status_and_the_servers_message() {
    let s = TestServer::start(&["--backend", "sim"]);
    let c = Client::new(&s.url, &s.token, None).unwrap();
    let pid = c
        .create_project(&CreateProjectBody {
            name: "errors".into(),
            description: None,
            repos: Vec::new(),
        })
        .await
        .unwrap()
        .id;

    let too_big = UpdateWarmPoolBody {
        target_size: Some(99.0),
        ..Default::default()
    };
    let e = c.update_warm_pool(&pid, &too_big).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::UNPROCESSABLE_ENTITY));
    assert_eq!(e.error_response().unwrap().error.code, "validation_error");
    assert_eq!(e.field_errors()[0].field, "targetSize");
    assert!(
        e.to_string()
            .contains("\n  targetSize: must be between 1 and 20"),
        "{e}"
    );

    let e = c
        .get_instance(&pid, "wpi_nosuchinstance00")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
    assert!(e.to_string().ends_with("(not_found)"), "{e}");
    // A name stays one path segment: sent as it is, this one would be `DELETE /v1/projects/{pid}`.
    let e = c
        .delete_env_var(&pid, &format!("../../{pid}"))
        .await
        .unwrap_err();
    assert!(e.status().is_some_and(|s| s.is_client_error()), "{e}");
    assert_eq!(c.get_project(&pid).await.unwrap().id, pid);

    let e = c.instance_events(&pid, "wpi_nosuchinstance00").await.err();
    assert_eq!(
        e.and_then(|e| e.status()),
        Some(StatusCode::NOT_FOUND),
        "an event stream's refusal is an error too"
    );

    let nowhere = Client::new("http://127.0.0.1:1", "t", None).unwrap();
    let e = nowhere.health().await.unwrap_err();
    assert!(matches!(e, ClientError::Unreachable { .. }), "{e:?}");
    assert!(e.is_transport() && e.status().is_none());
}
