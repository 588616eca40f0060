/*
 * error — the error-code table. eb_strerror and eb_err_name are generated from
 * EB_ERRNO_MAP in the public header, so a code cannot exist without a message.
 * Stateless; callable from any thread.
 */
#include <eventbus/eventbus.h>

EB_API const char *eb_strerror(int code)
{
    switch (code) {
#define EB__ERR_MSG(name, value, msg)                                                              \
    case value:                                                                                    \
        return msg;
        EB_ERRNO_MAP(EB__ERR_MSG)
#undef EB__ERR_MSG
    default:
        return "unknown error";
    }
}

EB_API const char *eb_err_name(int code)
{
    switch (code) {
#define EB__ERR_NAME(name, value, msg)                                                             \
    case value:                                                                                    \
        return #name;
        EB_ERRNO_MAP(EB__ERR_NAME)
#undef EB__ERR_NAME
    default:
        return "EB_UNKNOWN";
    }
}

EB_API const char *eb_version(void)
{
#define EB__STR2(x) #x
#define EB__STR(x) EB__STR2(x)
    return EB__STR(EB_VERSION_MAJOR) "." EB__STR(EB_VERSION_MINOR) "." EB__STR(EB_VERSION_PATCH);
}
