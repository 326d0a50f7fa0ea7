//! Every rule: the secrets it must find, in the file types they occur in, and the near misses it must not
//! report. All values are synthetic.

use vouch_scan::detect::{scan_text, TextKind};
use vouch_scan::RuleSet;

fn found(rules: &RuleSet, file: &str, text: &str) -> Vec<String> {
    let mut ids: Vec<String> = scan_text(rules, TextKind::of_path(file), text.as_bytes())
        .into_iter()
        .map(|c| rules.rules[c.rule].id.clone())
        .collect();
    ids.sort();
    ids
}

fn jwt(alg: &str) -> String {
    use base64::Engine as _;
    let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.{}",
        b(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#)),
        b(r#"{"sub":"ci-bot","iat":1700000000}"#),
        "dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    )
}

#[test]
fn true_positives_per_rule() {
    let rules = RuleSet::default_rules().unwrap();
    let jwt = jwt("HS256");
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx1y2p3cw5c2hN8wQ4b3n7ZKq5bq0D8y9b8PZsUhLZ2a7Bqk9Wm1\n-----END RSA PRIVATE KEY-----\n";
    let cases: Vec<(&str, String, &[&str])> = vec![
        ("a.py", "AWS_ACCESS_KEY_ID = \"AKIAQ2RT5WZXYUVB7C3D\"".into(), &["aws-access-key-id"]),
        ("a.env", "AWS_ACCESS_KEY_ID=ASIAQ2RT5WZXYUVB7C3D".into(), &["aws-access-key-id"]),
        ("a.js", "const awsSecretAccessKey = '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';".into(), &["aws-secret-access-key"]),
        ("a.ini", "aws_secret_access_key = k9Vb2Xq+7mZr/Lp4Tn8Wc1Yd6Hs3Jf0Ge5Ra2Uo9".into(), &["aws-secret-access-key"]),
        ("main.tf", "  secret_key = \"k9Vb2Xq+7mZr/Lp4Tn8Wc1Yd6Hs3Jf0Ge5Ra2Uo9\"".into(), &["aws-secret-access-key"]),
        ("a.go", "\tsecretKey := \"k9Vb2Xq+7mZr/Lp4Tn8Wc1Yd6Hs3Jf0Ge5Ra2Uo9\"".into(), &["aws-secret-access-key"]),
        ("a.js", "  googleApiKey: 'AIzaSyD8x7Qk2LmN4pR6tV8wY0zB3cE5gH7jK9l',".into(), &["google-api-key"]),
        ("a.cfg", format!("conn=DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={}==;EndpointSuffix=core.windows.net", "a".repeat(40) + &"Zx9".repeat(15) + "b")[..].into(), &["azure-storage-key"]),
        ("a.sh", "export GH_PAT=ghp_R8fK2mQ9xL4vN7pT1sW6yB3cD5hJ0gA2eZ8u".into(), &["github-token"]),
        ("a.yaml", "token: gho_R8fK2mQ9xL4vN7pT1sW6yB3cD5hJ0gA2eZ8u".into(), &["github-token"]),
        ("a.md", format!("use github_pat_{}", "A1b2C3d4E5".repeat(8) + "Zz")[..].into(), &["github-fine-grained-token"]),
        ("a.yml", "GITLAB_TOKEN: glpat-x7Kq2Lm9Np4Rt6Vw8Yz0".into(), &["gitlab-token"]),
        (".npmrc", "//registry.npmjs.org/:_authToken=npm_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8".into(), &["npm-token"]),
        (".pypirc", format!("password = pypi-AgEIcHlwaS5vcmc{}", "Q2x9Rt5mW8zK3vN7pL1s".repeat(3))[..].into(), &["pypi-token"]),
        ("a.go", "\tslackToken := \"xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx\"".into(), &["slack-token"]),
        ("a.txt", "hook https://hooks.slack.com/services/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".into(), &["slack-webhook"]),
        ("a.java", "    private static final String STRIPE_KEY = \"sk_live_4eC39HqLyjWDarjtT1zdp7dc\";".into(), &["stripe-key"]),
        ("a.env", format!("OPENAI_API_KEY=sk-proj-{}T3BlbkFJ{}", "Ab3dE6gH9jK2mN5pQ8sT1vW4", "yZ7bC0eF3hI6kL9nO2qR5tU8")[..].into(), &["openai-api-key"]),
        ("a.env", format!("ANTHROPIC_API_KEY=sk-ant-api03-{}", "Xy9_Zw8-Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe".repeat(3))[..].into(), &["anthropic-api-key"]),
        ("a.py", "TWILIO_API_KEY = \"SK0123456789abcdef0123456789abcdef\"".into(), &["twilio-api-key"]),
        ("a.py", format!("SENDGRID = \"SG.{}.{}\"", "aB3dE6gH9jK2mN5pQ8sT1v", "wY4zB7cE0fH3iK6lN9oQ2rT5uW8xZ1aC4dF7gJ0kM3p")[..].into(), &["sendgrid-api-key"]),
        ("id_rsa", pem.into(), &["private-key"]),
        ("a.json", "  \"private_key\": \"-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\\n-----END PRIVATE KEY-----\\n\",".into(), &["private-key"]),
        ("a.md", format!("curl -H 'Authorization: Bearer {jwt}' https://api"), &["jwt"]),
        ("a.py", "DATABASE_URL = \"postgresql://app:Xk9#mQ2vLp7@db.internal:5432/app\"".into(), &["database-url-password"]),
        ("a.env", "MONGO=mongodb+srv://app:Xk9mQ2vLp7zR@cluster0.example.net/db".into(), &["database-url-password"]),
        ("a.sh", "git clone https://deploy:Xk9mQ2vLp7zR@git.example.net/app.git".into(), &["basic-auth-url"]),
        ("Dockerfile", "RUN curl -fsSL -u deploy:Vq8xR2mN5tK7 https://artifacts.example.invalid/app.tgz".into(), &["cli-basic-auth"]),
        ("a.py", "headers[\"Authorization\"] = \"Bearer Summer_1234!\"".into(), &["bearer-token"]),
        ("a.py", "password = \"hK8#mQ2!xP9z\"".into(), &["generic-password"]),
        ("a.js", "  adminPassword: 'Tiger42',".into(), &["generic-password"]),
        ("a.properties", "spring.datasource.password=IilJcUq8f%s&b-v6IPG".into(), &["generic-password"]),
        ("Dockerfile", "ENV DB_PASSWORD=Dragon.77@".into(), &["generic-password"]),
        ("Dockerfile", "ENV DB_PASSWORD Dragon.77@".into(), &["generic-password"]),
        ("a.ini", "passwd = !pNRS119Kin68jma_o".into(), &["generic-password"]),
        ("a.go", "\tdb_pass := \"Winter_2231#\"".into(), &["generic-password"]),
        ("a.json", "  \"client_secret\": \"q8Zr3Lm7Vx2Kp9Wn4Tb6\",".into(), &["generic-secret"]),
        ("a.yaml", "  api_token: Zq8r3Lm7Vx2Kp9Wn4Tb6".into(), &["generic-secret"]),
        (
            "deploy.yaml",
            "      env:\n        - name: DB_PASSWORD\n          value: \"hK8#mQ2!xP9z\"\n        - name: API_TOKEN\n          value: Zq8r3Lm7Vx2Kp9Wn4Tb6\n".into(),
            &["generic-password", "generic-secret"],
        ),
    ];
    for (file, text, want) in cases {
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(found(&rules, file, &text), want, "{file}: {text}");
    }
}

#[test]
fn near_misses_are_not_reported() {
    let rules = RuleSet::default_rules().unwrap();
    let unsigned = {
        use base64::Engine as _;
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.{}", b("not json at all"), b(r#"{"sub":"x"}"#), "dBjftJeZ4CVPmB92K27uhbUJU1p1r")
    };
    let cases: Vec<(&str, String)> = vec![
        // Documentation examples and placeholders.
        ("a.py", "aws_access_key_id = \"AKIAIOSFODNN7EXAMPLE\"".into()),
        ("a.py", "aws_secret_access_key = \"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\"".into()),
        ("a.py", "password = os.environ.get(\"DB_PASSWORD\")".into()),
        ("a.py", "password = getpass.getpass()".into()),
        ("a.py", "password = \"changeme\"".into()),
        ("a.env", "password=<your-password-here>".into()),
        ("a.json", "\"password\": \"\",".into()),
        ("a.yaml", "  password: {{ .Values.db.password }}".into()),
        ("a.yaml", "  password: ${DB_PASSWORD}".into()),
        ("a.yaml", "  secretKeyRef: {name: db-secret, key: password}".into()),
        ("a.py", "DB_PASSWORD = \"********\"".into()),
        ("a.java", "        passwordField.setText(userInput)".into()),
        ("a.sh", "export DB_PASSWORD=\"$(vault kv get -field=password secret/db)\"".into()),
        ("a.env", "DB_PASSWORD=".into()),
        ("main.tf", "  password = var.db_password".into()),
        ("a.yaml", "  password: *default_password".into()),
        // Things named like secrets that are not secrets.
        ("a.py", "token_count = \"session-cache\"".into()),
        ("a.env", "TOKEN_COUNT_USER=1234".into()),
        ("a.yaml", "    - name: TOKEN_COUNT_NODE\n      value: \"cache\"".into()),
        ("a.py", "PASSWORD_FILE = \"/run/secrets/db_password\"".into()),
        ("a.py", "bypass = \"Xk9mQ2vLp7zR\"".into()),
        ("a.py", "raise ValueError(\"password must be at least 12 characters\")".into()),
        // Hashes, digests, ids.
        ("package-lock.json", "      \"integrity\": \"sha512-Q2x9Rt5mW8zK3vN7pL1sQ2x9Rt5mW8zK3vN7pL1sQ2x9Rt5mW8zK3vN7pL1s+Q==\"".into()),
        ("go.sum", "github.com/a/b v1.2.3 h1:Q2x9Rt5mW8zK3vN7pL1sQ2x9Rt5mW8zK3vN7pL1s=".into()),
        ("a.py", "API_TOKEN = \"3f2b8c1e-4a5d-4b6c-a7d8-9e0f1a2b3c4d\"".into()),
        ("a.py", "token = \"0123456789abcdef0123456789abcdef01234567\"".into()),
        ("a.yaml", "image: registry.example.com/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into()),
        ("Dockerfile", "FROM debian@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into()),
        // Token shapes that are too short, too long or wrongly prefixed.
        ("a.env", "X=ghp_tooShort123".into()),
        ("a.env", "X=AKIA1234".into()),
        ("a.env", "stripe_mode=sk_live_".into()),
        ("a.md", "-----BEGIN RSA PRIVATE KEY-----\n...\n-----END RSA PRIVATE KEY-----".into()),
        ("a.md", format!("token {unsigned}")),
        ("a.md", "postgresql://user:${DB_PASSWORD}@localhost/db".into()),
        ("a.md", "postgresql://user:password@localhost/db".into()),
        ("a.sh", "sudo -u postgres psql".into()),
        ("a.md", "Authorization: Bearer <token>".into()),
        ("a.md", "Authorization: Bearer $TOKEN".into()),
        ("a.py", "if token == \"Xk9mQ2vLp7zRq8\":".into()),
        // Seen in real trees: type annotations, working directories, sudoers, rendered docs, RFC examples.
        ("ec.py", "    backend: \"Backend\", private_key: \"_EllipticCurvePrivateKey\", data: bytes".into()),
        ("ocsp.pyi", "    private_key: typing.Optional[PRIVATE_KEY_TYPES],".into()),
        ("process.md", "  PWD: '/Users/maciej',".into()),
        ("50-local.rules", "//     %sudo ALL=(root) NOPASSWD: /bin/systemctl restart apt-cacher-ng.service".into()),
        ("tls.html", "<code>{pem: &#x3C;string|buffer>[, passphrase: &#x3C;string>]}</code>".into()),
        ("parameters.py", "        \"access_token\":\"2YotnFZFEjr1zCsicMWpAA\",".into()),
        ("extract.md", "    password: String,".into()),
        ("tls12.rs", "        let secret = b\"\\x9b\\xbe\\x43\\x6b\\xa9\\x40\\xf0\\x17\\xb1\\x76\\x52\\x84\";".into()),
        ("matcher.rs", "    ///     .all(\"https://Aladdin:opensesame@localhost:8887\")".into()),
    ];
    for (file, text) in cases {
        assert_eq!(found(&rules, file, &text), Vec::<String>::new(), "{file}: {text}");
    }
}

#[test]
fn user_rules_extend_override_and_disable() {
    let user = r#"
version = 1
[allowlist]
values = ["^ghp_R8fK2mQ9xL4vN7pT1sW6yB3cD5hJ0gA2eZ8u$"]

[[rule]]
id = "acme-key"
description = "ACME internal API key"
keywords = ["acme_"]
regex = 'acme_[a-z0-9]{16}'
remediation = "read it from vouch's secret store"

[[rule]]
id = "slack-token"
keywords = ["xoxb-"]
disabled = true
"#;
    let rules =
        RuleSet::from_files(&[("default", vouch_scan::rules::DEFAULT_RULES), ("user", user)], &[]).unwrap();
    assert_eq!(found(&rules, "a.env", "K=acme_0123456789abcdef"), vec!["acme-key"]);
    assert!(found(&rules, "a.env", "T=xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx").is_empty());
    assert!(found(&rules, "a.env", "T=ghp_R8fK2mQ9xL4vN7pT1sW6yB3cD5hJ0gA2eZ8u").is_empty());
    assert_eq!(found(&rules, "a.env", "T=ghp_Z8fK2mQ9xL4vN7pT1sW6yB3cD5hJ0gA2eZ8u"), vec!["github-token"]);

    // Bad rules files say what is wrong.
    for (bad, says) in [
        ("[[rule]]\nid = \"x\"\nkeywords = [\"a\"]\nregex = \"(\"\n", "rule `x`: regex"),
        ("[[rule]]\nid = \"x\"\nregex = \"a\"\n", "at least one non-empty keyword"),
        ("[[rule]]\nid = \"Bad Id\"\nkeywords = [\"a\"]\nregex = \"a\"\n", "lowercase"),
        ("[[rule]]\nid = \"x\"\nkeywords = [\"a\"]\nregex = \"a\"\ngroup = 3\n", "group 3 does not exist"),
        ("[[rule]]\nid = \"x\"\nkeywords = [\"a\"]\nregex = \"a\"\ncolour = 1\n", "unknown field"),
        ("version = 2\n", "version 2"),
        (
            "[[rule]]\nid = \"x\"\nkind = \"assignment\"\nkeywords = [\"a\"]\nregex = \"a\"\n",
            "remove `regex`",
        ),
    ] {
        let err = RuleSet::from_files(&[("user.toml", bad)], &[]).unwrap_err().to_string();
        assert!(err.contains(says), "{bad:?}: {err}");
        assert!(err.contains("user.toml") || err.contains("rule `"), "{err}");
    }
    let err = RuleSet::from_files(&[("d", vouch_scan::rules::DEFAULT_RULES)], &["nope".into()]).unwrap_err();
    assert!(err.to_string().contains("--skip-rule `nope`"), "{err}");
}

#[test]
fn multi_line_findings_span_their_lines() {
    let rules = RuleSet::default_rules().unwrap();
    let text = "x = 1\nKEY = \"\"\"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5oWYf3hqYv2xMoAoGCCqGSM49\nAwEHoUQDQgAE\n-----END EC PRIVATE KEY-----\"\"\"\n";
    let c = scan_text(&rules, TextKind::Code, text.as_bytes());
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].line, c[0].end_line, c[0].column), (2, 5, 10));
}

/// Secret stores, registries, CI and cloud platforms: gitleaks' default set as it matters for containers,
/// and the near misses beside each. All values are synthetic (random, of each provider's documented shape).
#[test]
fn container_platform_rules() {
    let rules = RuleSet::default_rules().unwrap();
    let cases: Vec<(&str, &str, &str)> = vec![
        ("a.env", "VAULT_TOKEN=hvs.CAESIGTd7FguoV8FWnFbB0JxXujr4qqaaABvvLOzAxzXMcU1vsHiQMaRiNTN9Ox98whGcTZc1UWb5fxzpF7STG7nVLe3lAR", "vault-token"),
        ("a.sh", "export BAO_TOKEN=hvb.AAAAAQUsRJlNONwktN9ugkZeESG61she-QAqq0nv3Vth1Ls6v6_O9JL8ZsoWw-Rxl_IUiTeNUJ_HLRwb8GPJ7KTSJS0Sw5UQsvzU9Kk1v1MIdzu4xCxf8CvgroOx9ye17SWjAEVaSZJ0oVeMmL", "vault-token"),
        ("a.py", "client = hvac.Client(url=URL, token=\"hvs.CAESIGTd7FguoV8FWnFbB0JxXujr4qqaaABvvLOzAxzXMcU1vsHiQMaRiNTN9Ox98whGcTZc1UWb5fxzpF7STG7nVLe3lAR\")", "vault-token"),
        ("a.env", "VAULT_TOKEN=s.IGv8Ls9w0iAA0KPIxDjkMyKE", "vault-token-legacy"),
        ("a.yaml", "  vault_token: \"s.IGv8Ls9w0iAA0KPIxDjkMyKE\"", "vault-token-legacy"),
        ("a.sh", "curl -H \"X-Vault-Token: s.IGv8Ls9w0iAA0KPIxDjkMyKE\" $VAULT_ADDR/v1/secret", "vault-token-legacy"),
        ("config.json", "\t\t\t\"auth\": \"Y2ktYm90OlZxOHhSMm1ONXRLNw==\"", "docker-config-auth"),
        ("config.json", "{\"auths\":{\"ghcr.io\":{\"auth\":\"Y2ktYm90OlZxOHhSMm1ONXRLNw==\"}}}", "docker-config-auth"),
        ("config.json", "\t\t\t\"identitytoken\": \"ORXh7H4fWP36ROfcFG4EnCtjBrNCKeRHp4s1fLte\"", "docker-config-identity-token"),
        ("pull-secret.yaml", "  .dockerconfigjson: eyJhdXRocyI6IHsicmVnaXN0cnkuZXhhbXBsZS5jb20iOiB7ImF1dGgiOiAiWTJrdFltOTBPbFp4T0hoU01tMU9OWFJMTnc9PSJ9fX0=", "kubernetes-dockerconfigjson"),
        ("a.env", "DOCKERHUB_TOKEN=dckr_pat_zrlSaWnPsPW23C-L9WXuHM-G1cO", "docker-hub-token"),
        (".npmrc", "//npm.example.com/:_authToken=ORXh7H4fWP36ROfcFG4EnCtjBrNCKeRHp4s1fLte", "npmrc-auth"),
        ("a.env", "ARTIFACTORY_KEY=AKCp8tF7sjEbhQN9CpscYi0zaEIJrp7EYcpFr2jUssFMEHP3M4V5hbWitsITvNsUHbDwxRV0L", "jfrog-token"),
        ("a.env", "AZURE_CLIENT_SECRET=ica8Q~G6nyb229X8YzL7iMa3K8Nsv9~Qt2giDIki", "azure-ad-client-secret"),
        ("a.env", "ALIBABA_CLOUD_ACCESS_KEY_ID=LTAIQ8bvUBezSFdh1hoNP08h", "alibaba-access-key-id"),
        ("a.env", "DIGITALOCEAN_TOKEN=dop_v1_49e455d52613c2813c40d2affbb1494978278947bec540a2123e7cefa30c14d7", "digitalocean-token"),
        ("a.env", "HEROKU_API_KEY=HRKU-AAok_BrWTELQSXWrTL3UeBxYimeexzzf_9Sa28M2P77mytujVX8tGoJuKEe9", "heroku-api-key"),
        (".terraformrc", "  token = \"5cw7Wxu8dSbRDE.atlasv1.tpPL6EuezdDkZUNx7UKi7uEwAf3Ia7h50vfeSmjE_l8gFg-YhgG05NgeywZyDkOnluj\"", "terraform-cloud-token"),
        ("a.env", "PULUMI_ACCESS_TOKEN=pul-60ebfdc409e7349f28ca442f72d781f7169b32da", "pulumi-token"),
        ("a.env", "DOPPLER_TOKEN=dp.pt.yWXJa5sP8WiKbCj0SPY9bUdSBrgZZyJiuetkiqFRusc", "doppler-token"),
        ("a.env", "BUILDKITE_AGENT_TOKEN=bkua_200314bd807d4b6ab0553854edd3aae7ed5e15ff", "buildkite-token"),
        ("a.env", "GRAFANA_TOKEN=glsa_Magi02ARdnac6KpET4wzDnmr0mtJHwWW_7bb71fcb", "grafana-token"),
        ("a.env", "HF_TOKEN=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", "huggingface-token"),
        ("a.env", "DATABRICKS_TOKEN=dapi5c0a09cfce14db0699202bd90872129b", "databricks-token"),
        ("a.env", "SENTRY_AUTH_TOKEN=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", "sentry-token"),
        ("a.env", "SHOPIFY_TOKEN=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", "shopify-token"),
        ("keys.txt", "AGE-SECRET-KEY-1GQLC4YLJP87KV4CFJL98J64YMRW603YF3X7MTC09UKG9QFHPPSAC9RDVUQ", "age-secret-key"),
        ("a.env", "POSTMAN_API_KEY=PMAK-f28f015cd160dddc05a496d2-b6cd684fb9035e22c1d460fae4e72b005d", "postman-api-key"),
        ("a.env", "LINEAR_API_KEY=lin_api_friWPxvXnjsH55SJfshgPzxtx6EJLC93p9KiqbIa", "linear-api-key"),
        ("a.env", "NEW_RELIC_API_KEY=NRAK-YIP4DAAN0O6PTD6PCYWB9T22GHX", "new-relic-key"),
        ("a.env", "FLY_API_TOKEN=fo1_JXWMvj5hBXmMV0r6Si-aA6fhloRsVRHJ9spHGdGXvFH", "flyio-token"),
        ("a.env", "JIRA_API_TOKEN=ATATT34wrgTpb6f-fd0p04Coilfi6MiIpZNH6MMaP-7WtBHOA6ltTk24Ywzr_v5Scs3I-BEv1GOLnzH2TH_looRmnKwgXwQHm0QmNiLR00iiMixfm0n71jC1dLnPUj7WnvFomkW3oIN62fArWxyPjrNg7N4GKvG68Zmrz6n4DrFvl5G7u9nMGTgpAdR9_KQh", "atlassian-api-token"),
        ("a.env", "CF_ORIGIN_CA_KEY=v1.0-94d9db49610f59d9deaa05f0-feb170f36557c3cd780672bd973be1804d1e06635eeff920e60e62a63b257c01d196cc53c664ce4d08e6827dde66a8165b3db49504d30ea2f4b01bf8ead5cde07f932f72a32ad5ab19", "cloudflare-origin-ca-key"),
    ];
    for (file, text, want) in cases {
        assert_eq!(found(&rules, file, text), vec![want.to_owned()], "{file}: {text}");
    }
    let near: Vec<(&str, &str)> = vec![
        // Placeholders where the credential would be (`user:password`, `username:${PASSWORD}`, a pull
        // secret whose auth is `user:password`).
        ("config.json", "\t\t\t\"auth\": \"dXNlcjpwYXNzd29yZA==\""),
        ("config.json", "\t\t\t\"auth\": \"dXNlcm5hbWU6JHtQQVNTV09SRH0=\""),
        ("config.json", "\"auth\": \"Basic\","),
        ("pull-secret.yaml", "  .dockerconfigjson: eyJhdXRocyI6IHsicmVnaXN0cnkuZXhhbXBsZS5jb20iOiB7ImF1dGgiOiAiZFhObGNqcHdZWE56ZDI5eVpBPT0ifX19"),
        ("pull-secret.yaml", "  .dockerconfigjson: {{ .Values.pullSecret | b64enc }}"),
        (".npmrc", "//registry.npmjs.org/:_authToken=${NPM_TOKEN}"),
        ("a.env", "VAULT_TOKEN=s.xxxxxxxxxxxxxxxxxxxxxxxx"),
        ("a.env", "VAULT_ADDR=https://vault.internal:8200"),
        ("a.env", "VAULT_TOKEN=hvs.short"),
        ("a.md", "vault.read(\"secret.data.app_config_settings_name\")"),
        ("a.py", "def hf_load_model_from_the_hub_and_cache_it(): pass"),
        ("a.txt", "dapi0123456789"),
    ];
    for (file, text) in near {
        assert_eq!(found(&rules, file, text), Vec::<String>::new(), "{file}: {text}");
    }
}
