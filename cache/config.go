package cache

import "time"

// Config is the credential cache configuration (YAML key "cache"). TTL 0 or
// no "cache" key turns the cache off.
type Config struct {
	TTL  time.Duration `yaml:"ttl"`
	Size int           `yaml:"size"` // entries; 0 = DefaultSize
}
