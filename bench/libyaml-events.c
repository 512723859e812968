// libyaml alone: parses each file named to events (yaml_parser_parse up to
// STREAM_END) and nothing else, to tell libyaml's cost in plugin discovery
// from the host's (docs/benchmarks.md, "Where a one-shot command's time goes").
//   gcc -O2 bench/libyaml-events.c -lyaml -o build/libyaml-events
//   valgrind --tool=callgrind build/libyaml-events manifests/*.yaml
#include <stdio.h>
#include <yaml.h>

static unsigned char buf[1 << 20];

int main(int argc, char **argv) {
    long events = 0;
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) { perror(argv[i]); return 1; }
        size_t n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        yaml_parser_t p;
        yaml_parser_initialize(&p);
        yaml_parser_set_input_string(&p, buf, n);
        for (;;) {
            yaml_event_t e;
            if (!yaml_parser_parse(&p, &e)) { fprintf(stderr, "%s: %s\n", argv[i], p.problem); break; }
            events++;
            int type = e.type;
            yaml_event_delete(&e);
            if (type == YAML_STREAM_END_EVENT) break;
        }
        yaml_parser_delete(&p);
    }
    printf("%ld events\n", events);
    return 0;
}
