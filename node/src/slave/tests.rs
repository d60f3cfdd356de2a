//! Tests of the slave as a whole, on a real socket: health, a put through
//! the Replica service, shutdown, and its data after a restart.

use super::*;
use crate::proto;
use crate::proto::replica_client::ReplicaClient;
use crate::version::Version;
use tonic_health::pb::health_client::HealthClient;

/// The whole slave over real sockets: health is SERVING, a put is
/// stored, shutdown stops everything, and the data is there after a
/// restart (persist-before-ack end to end).
#[tokio::test]
async fn serves_then_shuts_down_and_keeps_data() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let config = SlaveConfig {
            id: "s1".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: "127.0.0.1:0".into(),
            data_dir: dir.path().to_path_buf(),
            // Nobody listens there: registration keeps retrying.
            masters: vec!["127.0.0.1:1".into()],
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            security: Security::default(),
            store: StoreOptions::default(),
        };
        let listener = TcpListener::bind(config.listen).await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let slave = Slave::open(config.clone()).await.unwrap();
        assert_eq!(*slave.registered().borrow(), None);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(slave.serve(listener, async move {
            let _ = stop_rx.await;
        }));

        let channel = tonic::transport::Channel::from_shared(addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = HealthClient::new(channel);
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "dsm.v1.Replica".into(),
            })
            .await
            .unwrap();
        assert_eq!(
            reply.into_inner().status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );

        let mut client = ReplicaClient::connect(addr).await.unwrap();
        let put = proto::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            version: Some(Version::new(1, 1).into()),
            epoch: 1,
            force: false,
            tombstone: false,
        };
        assert!(client.put(put).await.unwrap().into_inner().stored);
        drop(client);
        drop(health);

        stop.send(()).unwrap();
        task.await.unwrap().unwrap();

        let slave = Slave::open(config).await.unwrap();
        assert_eq!(
            slave.store().get(b"k").unwrap(),
            Some((bytes::Bytes::from_static(b"v"), Version::new(1, 1)))
        );
        assert_eq!(slave.store().epoch(), 1);
    })
    .await
    .unwrap();
}
