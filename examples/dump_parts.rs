use mail_parser::{MessageParser, MimeHeaders};
fn main() {
    let raw = std::fs::read(std::env::args().nth(1).unwrap()).unwrap();
    let m = MessageParser::new().parse(&raw).unwrap();
    for (i, p) in m.parts.iter().enumerate() {
        let ct = p.content_type().map(|c| format!("{}/{:?}", c.ctype(), c.subtype()));
        println!("{i} {ct:?} {:?}", String::from_utf8_lossy(p.contents()).chars().take(150).collect::<String>());
    }
}
