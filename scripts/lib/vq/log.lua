-- log: the console, the audit file and redaction (see bindings/log.c).
return require "vq.core.log"
