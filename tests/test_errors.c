/*
 * Error codes: eb_strerror and eb_err_name are total functions generated from
 * the EB_ERRNO_MAP table, and the codes themselves are distinct and negative.
 */
#include "common.h"

#include <limits.h>

TestSuite(errors, .timeout = EB_CRITERION_TIMEOUT);

struct code_row {
    int code;
    const char *name;
    const char *msg;
};

static const struct code_row codes[] = {
#define ROW(name, value, msg) {value, #name, msg},
    EB_ERRNO_MAP(ROW)
#undef ROW
};
#define N_CODES (sizeof codes / sizeof codes[0])

Test(errors, strerror_is_never_null_for_any_int)
{
    static const int edge[] = {INT_MIN, INT_MIN + 1, -1000000, -17,         -16,
                               1,       2,           100,      INT_MAX - 1, INT_MAX};
    for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++) {
        const char *s = eb_strerror(edge[i]);
        cr_assert_not_null(s, "eb_strerror(%d)", edge[i]);
        cr_assert_gt(strlen(s), 0, "eb_strerror(%d) is empty", edge[i]);
    }
    for (int c = -5000; c <= 5000; c++) {
        const char *s = eb_strerror(c);
        cr_assert_not_null(s, "eb_strerror(%d)", c);
        cr_assert_gt(strlen(s), 0, "eb_strerror(%d) is empty", c);
    }
}

Test(errors, strerror_says_unknown_error_for_codes_not_in_the_table)
{
    cr_assert_str_eq(eb_strerror(INT_MIN), "unknown error");
    cr_assert_str_eq(eb_strerror(INT_MAX), "unknown error");
    cr_assert_str_eq(eb_strerror(1), "unknown error");
    cr_assert_str_eq(eb_strerror(-100), "unknown error");
}

Test(errors, strerror_gives_the_message_of_each_code_in_the_table)
{
    for (size_t i = 0; i < N_CODES; i++) {
        cr_assert_str_eq(eb_strerror(codes[i].code), codes[i].msg, "code %d", codes[i].code);
    }
}

Test(errors, err_name_spells_each_code_in_the_table)
{
    for (size_t i = 0; i < N_CODES; i++) {
        cr_assert_str_eq(eb_err_name(codes[i].code), codes[i].name, "code %d", codes[i].code);
    }
    cr_assert_str_eq(eb_err_name(EB_EINVAL), "EB_EINVAL");
    cr_assert_str_eq(eb_err_name(EB_OK), "EB_OK");
}

Test(errors, err_name_is_eb_unknown_for_any_other_int)
{
    static const int others[] = {INT_MIN, -1000, -100, 1, 42, INT_MAX};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        const char *s = eb_err_name(others[i]);
        cr_assert_not_null(s);
        cr_assert_str_eq(s, "EB_UNKNOWN", "eb_err_name(%d)", others[i]);
    }
    for (int c = -5000; c <= 5000; c++) {
        cr_assert_not_null(eb_err_name(c), "eb_err_name(%d)", c);
    }
}

Test(errors, codes_are_distinct_and_negative_except_ok)
{
    for (size_t i = 0; i < N_CODES; i++) {
        if (strcmp(codes[i].name, "EB_OK") == 0) {
            cr_assert_eq(codes[i].code, 0);
        } else {
            cr_assert_lt(codes[i].code, 0, "%s", codes[i].name);
        }
        for (size_t j = i + 1; j < N_CODES; j++) {
            cr_assert_neq(codes[i].code, codes[j].code, "%s and %s", codes[i].name, codes[j].name);
        }
    }
}

Test(errors, version_string_matches_the_version_macros)
{
    char want[64];
    snprintf(want, sizeof want, "%d.%d.%d", EB_VERSION_MAJOR, EB_VERSION_MINOR, EB_VERSION_PATCH);
    cr_assert_not_null(eb_version());
    cr_assert_str_eq(eb_version(), want);
}
