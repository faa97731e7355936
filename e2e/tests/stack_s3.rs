//! The S3 server on the local stack is real: put, get, list and multipart upload through
//! aws-sdk-s3, exactly as against AWS.

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use weir_e2e::{require_port, s3_endpoint, unique};

fn client() -> aws_sdk_s3::Client {
    let creds = Credentials::new(
        std::env::var("S3_ACCESS_KEY").unwrap_or_else(|_| "weiradmin".into()),
        std::env::var("S3_SECRET_KEY").unwrap_or_else(|_| "weirsecret".into()),
        None,
        None,
        "weir-e2e",
    );
    let cfg = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(s3_endpoint())
        .credentials_provider(creds)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(cfg)
}

#[tokio::test]
async fn put_get_list_and_multipart() {
    require_port("S3", 7070);
    let s3 = client();
    let bucket = "weir";
    let prefix = unique("e2e");
    for i in 0..3 {
        s3.put_object()
            .bucket(bucket)
            .key(format!("{prefix}/small-{i}"))
            .body(ByteStream::from(format!("payload {i}").into_bytes()))
            .send()
            .await
            .expect("put_object");
    }
    let got = s3.get_object().bucket(bucket).key(format!("{prefix}/small-1")).send().await.expect("get_object");
    assert_eq!(got.body.collect().await.unwrap().into_bytes().as_ref(), b"payload 1");

    // Multipart: two parts of 5 MiB (the S3 minimum for non-final parts) and a small last one.
    let key = format!("{prefix}/big");
    let up = s3.create_multipart_upload().bucket(bucket).key(&key).send().await.expect("create_multipart_upload");
    let upload_id = up.upload_id().expect("upload id").to_string();
    let parts_data: Vec<Vec<u8>> = vec![vec![b'a'; 5 << 20], vec![b'b'; 5 << 20], b"tail".to_vec()];
    let mut parts = Vec::new();
    for (i, data) in parts_data.iter().enumerate() {
        let n = i as i32 + 1;
        let r = s3
            .upload_part()
            .bucket(bucket)
            .key(&key)
            .upload_id(&upload_id)
            .part_number(n)
            .body(ByteStream::from(data.clone()))
            .send()
            .await
            .expect("upload_part");
        parts.push(CompletedPart::builder().part_number(n).e_tag(r.e_tag().unwrap_or_default()).build());
    }
    s3.complete_multipart_upload()
        .bucket(bucket)
        .key(&key)
        .upload_id(&upload_id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .expect("complete_multipart_upload");
    let big = s3.get_object().bucket(bucket).key(&key).send().await.unwrap().body.collect().await.unwrap().into_bytes();
    assert_eq!(big.len(), (10 << 20) + 4);
    assert!(big.starts_with(b"aaa") && big.ends_with(b"btail"));

    let listed = s3.list_objects_v2().bucket(bucket).prefix(&prefix).send().await.expect("list_objects_v2");
    let mut keys: Vec<String> = listed.contents().iter().filter_map(|o| o.key().map(str::to_string)).collect();
    keys.sort();
    let mut want: Vec<String> = (0..3).map(|i| format!("{prefix}/small-{i}")).collect();
    want.push(key.clone());
    want.sort();
    assert_eq!(keys, want);
}
