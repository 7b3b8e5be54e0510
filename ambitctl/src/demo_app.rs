//! The demo application: a Bookinfo-shaped set of tiny HTTP services, one binary, one role per
//! process. `productpage` calls `details` and `reviews`; `reviews` v2/v3 call `ratings`. Every
//! answer names who served it (`x-served-by`, `x-demo-version`), so canary splits and retries are visible from
//! the caller. Used by the local sandbox and by kind-tests (image `demo-app`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Productpage,
    Details,
    Reviews,
    Ratings,
    /// Serves only `/healthz`: a pod to `kubectl exec` curl from.
    Client,
}

#[derive(clap::Args, Clone, Debug)]
pub struct DemoAppArgs {
    /// Which Bookinfo service this process is.
    #[arg(long, value_enum)]
    pub role: Role,
    /// Version label reported in answers (reviews v1 shows no stars, v2 black, v3 red).
    #[arg(long, default_value = "v1", env = "DEMO_VERSION")]
    pub version: String,
    #[arg(long, default_value = "0.0.0.0:9080")]
    pub listen: SocketAddr,
    /// Base URL of the details service (productpage only).
    #[arg(long, default_value = "http://details:9080", env = "DETAILS_URL")]
    pub details: String,
    /// Base URL of the reviews service (productpage only).
    #[arg(long, default_value = "http://reviews:9080", env = "REVIEWS_URL")]
    pub reviews: String,
    /// Base URL of the ratings service (reviews v2/v3 only).
    #[arg(long, default_value = "http://ratings:9080", env = "RATINGS_URL")]
    pub ratings: String,
    /// Answer this fraction of requests (0 to 1) with 503, to demonstrate retries.
    #[arg(long, default_value_t = 0.0, value_parser = fail_rate, env = "DEMO_FAIL_RATE")]
    pub fail_rate: f64,
    /// Name reported in `x-served-by` (defaults to $HOSTNAME, the pod name in Kubernetes).
    #[arg(long, env = "HOSTNAME", default_value = "demo")]
    pub instance: String,
}

fn fail_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "{s:?} is not a fraction between 0 and 1 (e.g. 0.5)"
        )),
    }
}

struct App {
    args: DemoAppArgs,
    served: AtomicU64,
}

type Body = Full<Bytes>;

pub async fn run(args: DemoAppArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!(
        "demo-app {:?} {} listening on {}",
        args.role,
        args.version,
        listener.local_addr()?
    );
    serve(listener, args).await
}

/// Serves on an already bound listener until the task is dropped.
pub async fn serve(listener: TcpListener, args: DemoAppArgs) -> anyhow::Result<()> {
    let app = Arc::new(App {
        args,
        served: AtomicU64::new(0),
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(req).await) }
            });
            // Errors here are a client going away mid-request; nothing to do.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl App {
    fn served_by(&self) -> String {
        format!(
            "{}-{}/{}",
            role_name(self.args.role),
            self.args.version,
            self.args.instance
        )
    }

    fn should_fail(&self) -> bool {
        // Deterministic spread: exactly fail_rate of every 100 requests fail.
        let n = self.served.fetch_add(1, Ordering::Relaxed);
        ((n * 37 % 100) as f64) < self.args.fail_rate * 100.0
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        if path == "/healthz" {
            return self.reply(StatusCode::OK, json!({"status": "ok"}));
        }
        if self.should_fail() {
            return self.reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "injected failure (--fail-rate)"}),
            );
        }
        let id = path.rsplit('/').next().unwrap_or("0").to_string();
        // `/` answers like the role's main resource, so a caller needs no per-role paths.
        let result = match (self.args.role, path.as_str()) {
            (Role::Productpage, "/" | "/productpage") => self.productpage().await,
            (Role::Details, "/") => Ok(self.details("0")),
            (Role::Details, p) if p.starts_with("/details") => Ok(self.details(&id)),
            (Role::Reviews, "/") => self.reviews("0").await,
            (Role::Reviews, p) if p.starts_with("/reviews") => self.reviews(&id).await,
            (Role::Ratings, "/") => Ok(self.ratings("0")),
            (Role::Ratings, p) if p.starts_with("/ratings") => Ok(self.ratings(&id)),
            _ => return self.reply(
                StatusCode::NOT_FOUND,
                json!({"error": format!("{path} is not served by {}", role_name(self.args.role))}),
            ),
        };
        match result {
            Ok(body) => self.reply(StatusCode::OK, body),
            Err(e) => self.reply(StatusCode::BAD_GATEWAY, json!({"error": format!("{e:#}")})),
        }
    }

    fn reply(&self, status: StatusCode, body: Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("x-served-by", self.served_by())
            .header("x-demo-version", &self.args.version)
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("static response parts are valid")
    }

    fn details(&self, id: &str) -> Value {
        json!({"id": id, "author": "William Shakespeare", "year": 1595, "type": "paperback",
               "pages": 200, "publisher": "PublisherA", "language": "English"})
    }

    fn ratings(&self, id: &str) -> Value {
        json!({"id": id, "ratings": {"Reviewer1": 5, "Reviewer2": 4}, "served_by": self.served_by()})
    }

    async fn reviews(&self, id: &str) -> anyhow::Result<Value> {
        let stars = match self.args.version.as_str() {
            "v2" => Some("black"),
            "v3" => Some("red"),
            _ => None,
        };
        let ratings = match stars {
            Some(_) => Some(get_json(&format!("{}/ratings/{id}", self.args.ratings)).await?),
            None => None,
        };
        Ok(
            json!({"id": id, "version": self.args.version, "served_by": self.served_by(),
                  "stars": stars, "ratings": ratings,
                  "reviews": ["An extremely entertaining play by Shakespeare.",
                              "Absolutely fun and entertaining."]}),
        )
    }

    async fn productpage(&self) -> anyhow::Result<Value> {
        let details_url = format!("{}/details/0", self.args.details);
        let reviews_url = format!("{}/reviews/0", self.args.reviews);
        let (details, reviews) = tokio::join!(get_json(&details_url), get_json(&reviews_url));
        Ok(
            json!({"product": "The Comedy of Errors", "served_by": self.served_by(),
                  "details": details?, "reviews": reviews?}),
        )
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Productpage => "productpage",
        Role::Details => "details",
        Role::Reviews => "reviews",
        Role::Ratings => "ratings",
        Role::Client => "client",
    }
}

/// One GET over a fresh connection (the mesh, not the app, is what pools and encrypts).
pub async fn get_json(url: &str) -> anyhow::Result<Value> {
    let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    let host = uri.host().context("URL without host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let fetch = async {
        let stream = TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("connecting to {host}:{port}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::get(uri.path())
            .header("host", format!("{host}:{port}"))
            .body(Full::new(Bytes::new()))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::ensure!(status.is_success(), "{url} answered {status}");
        Ok::<_, anyhow::Error>(serde_json::from_slice(&body)?)
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .with_context(|| format!("{url} did not answer within 5s"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start(role: Role, version: &str, extra: impl FnOnce(&mut DemoAppArgs)) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut args = DemoAppArgs {
            role,
            version: version.into(),
            listen: addr,
            details: String::new(),
            reviews: String::new(),
            ratings: String::new(),
            fail_rate: 0.0,
            instance: format!("{version}-test"),
        };
        extra(&mut args);
        tokio::spawn(serve(listener, args));
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn productpage_composes_details_reviews_and_ratings() {
        let ratings = start(Role::Ratings, "v1", |_| {}).await;
        let reviews = start(Role::Reviews, "v3", |a| a.ratings = ratings.clone()).await;
        let details = start(Role::Details, "v1", |_| {}).await;
        let page = start(Role::Productpage, "v1", |a| {
            a.details = details.clone();
            a.reviews = reviews.clone();
        })
        .await;
        let v = get_json(&format!("{page}/productpage")).await.unwrap();
        assert_eq!(v["reviews"]["version"], "v3");
        assert_eq!(v["reviews"]["stars"], "red");
        assert_eq!(v["reviews"]["ratings"]["ratings"]["Reviewer1"], 5);
        assert_eq!(v["details"]["author"], "William Shakespeare");
    }

    #[tokio::test]
    async fn fail_rate_fails_exactly_that_share_and_upstream_errors_are_502() {
        let ratings = start(Role::Ratings, "v1", |a| a.fail_rate = 0.3).await;
        let mut failed = 0;
        for _ in 0..100 {
            if get_json(&format!("{ratings}/ratings/1")).await.is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 30);
        // reviews v2 depends on a ratings service that isn't there: 502 with the reason.
        let reviews = start(Role::Reviews, "v2", |a| {
            a.ratings = "http://127.0.0.1:1".into()
        })
        .await;
        let err = get_json(&format!("{reviews}/reviews/1")).await.unwrap_err();
        assert!(format!("{err:#}").contains("502"), "{err:#}");
    }
}
