"""omnigate: the OAP/1 server (TLS 1.3, ALPN ron/1) in front of storage and mailbox."""
