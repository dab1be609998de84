//! The floor for `benches/proxy.sh`: a byte relay with no protocol work at all (tokio's
//! `copy_bidirectional`, one task per connection, on one thread as `walwatch proxy` by default),
//! so the bench can show what any proxy process in the path costs on this machine, beside what
//! `walwatch proxy` costs.
//!
//!     cargo run --release --example tcp_relay -- 127.0.0.1:LISTEN 127.0.0.1:UPSTREAM

use tokio::net::{TcpListener, TcpStream};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: tcp_relay LISTEN-ADDR UPSTREAM-ADDR");
        std::process::exit(2);
    };
    let listener = TcpListener::bind(&listen).await?;
    eprintln!("tcp_relay: listening on {listen}");
    loop {
        let (mut client, _) = listener.accept().await?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            if let Ok(mut server) = TcpStream::connect(&upstream).await {
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}
