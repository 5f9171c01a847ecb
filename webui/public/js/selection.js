// The devices ticked in the device list, for a rollout: kept in memory while the app is open
// (across views and pages of the list), cleared on logout or by the person.

export const selection = new Map(); // device id -> name
