//! Runs the fake Anthropic API until interrupted, printing its URL: for trying `claude` or agentq
//! by hand and for benchmarks. `ANTHROPIC_BASE_URL=<url> ANTHROPIC_API_KEY=x claude -p ...`

fn main() -> std::io::Result<()> {
    let server = fake_anthropic::FakeServer::start()?;
    println!("{}", server.url());
    loop {
        std::thread::park();
    }
}
